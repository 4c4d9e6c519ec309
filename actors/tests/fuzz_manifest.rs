//! Bad input campaign (issue 7, point 3): property-based fuzzing of `plugin.toml` parsing.
//!
//! `parse_manifest` reads whatever a user (or a broken editor) left in a plugin folder. It must
//! give a manifest or a `ManifestError` whose message a user can read, and never panic. Targets:
//!
//! - arbitrary text, and TOML-looking line soup;
//! - structured manifests: every section neko reads (`[plugin]`, `[plugin.sdk]`,
//!   `[[plugin.dependency]]`, `[plugin.safety]`, `[plugin.author]`, `entries`,
//!   `[plugin_runtime]`) with each key right, absent, or of a random type or value, version
//!   specifiers from a PEP 440-ish grammar with junk mixed in;
//! - those manifests as text, mutated character by character;
//! - `version_matches` and `SdkRanges::check` on grammar-made specifiers and versions.
//!
//! An accepted manifest is also serialised to JSON (what `GET /plugins` and `config.get` show).
//!
//! Budget: `NEKO_FUZZ_CASES` cases per target (default below: a few seconds in a debug build).

use std::path::Path;

use neko_actors::manifest::{SdkRanges, parse_manifest, version_matches};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

#[path = "../../protocol/tests/support/fuzz.rs"]
mod fuzz;
use fuzz::{cases, config};
use toml::{Table, Value};

const PATH: &str = "/plugins/demo/plugin.toml";

/// Parses `text`; checks what an answer must look like either way.
fn check(text: &str) -> Result<(), TestCaseError> {
    match parse_manifest(text, Path::new(PATH)) {
        Ok(m) => {
            prop_assert!(!m.id.as_str().is_empty());
            prop_assert!(m.config_path.is_absolute());
            serde_json::to_string(&m).map_err(|e| TestCaseError::fail(e.to_string()))?;
        }
        Err(e) => prop_assert!(!e.to_string().trim().is_empty(), "empty error message"),
    }
    Ok(())
}

/// Version-like text: release numbers (sometimes huge or too many), pre/post/dev suffixes,
/// separators, a `v`, a local part, stars, junk.
fn version_text() -> impl Strategy<Value = String> {
    let number = prop_oneof![
        5 => (0u64..20).prop_map(|n| n.to_string()),
        1 => Just("99999999999999999999999".to_owned()),
        1 => Just(String::new()),
    ];
    let release = proptest::collection::vec(number.clone(), 1..5).prop_map(|p| p.join("."));
    let label = prop::sample::select(vec![
        "", "a", "b", "c", "rc", "alpha", "beta", "pre", "preview", "post", "rev", "r", "dev",
        ".dev", ".post", "-", "_", ".", "+local", ".*", "*", "é", " ", "x",
    ]);
    let suffix = proptest::collection::vec((label, number), 0..3).prop_map(|parts| {
        parts
            .into_iter()
            .map(|(l, n)| format!("{l}{n}"))
            .collect::<String>()
    });
    (
        prop::sample::select(vec!["", "v", "V", " "]),
        release,
        suffix,
    )
        .prop_map(|(v, r, s)| format!("{v}{r}{s}"))
}

/// Specifier-like text: comma-separated clauses with operators, versions, wildcards and junk.
fn spec_text() -> impl Strategy<Value = String> {
    let op = prop::sample::select(vec![
        "", "==", "!=", ">=", "<=", ">", "<", "~=", "===", "=", "=>", "~", "^", " == ",
    ]);
    let clause = prop_oneof![
        12 => (op, version_text()).prop_map(|(o, v)| format!("{o}{v}")),
        1 => "\\PC{0,8}",
    ];
    proptest::collection::vec(clause, 0..4).prop_map(|c| c.join(","))
}

/// Any TOML value, nested a little.
fn toml_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        "\\PC{0,12}".prop_map(Value::String),
        spec_text().prop_map(Value::String),
        any::<i64>().prop_map(Value::Integer),
        prop_oneof![
            any::<f64>(),
            Just(f64::NAN),
            Just(f64::INFINITY),
            Just(-0.0)
        ]
        .prop_map(Value::Float),
        any::<bool>().prop_map(Value::Boolean),
        Just(Value::Datetime("1979-05-27T07:32:00Z".parse().unwrap())),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Table(m.into_iter().collect())),
        ]
    })
}

/// `good` most of the time, else absent or any value.
fn maybe(good: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        12 => good.prop_map(Some),
        4 => Just(None),
        1 => toml_value().prop_map(Some),
    ]
    .boxed()
}

/// Like [`maybe`] for the keys a manifest cannot do without: rarely absent or wrong.
fn required(good: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
    prop_oneof![
        30 => good.prop_map(Some),
        1 => Just(None),
        1 => toml_value().prop_map(Some),
    ]
    .boxed()
}

fn string(s: impl Strategy<Value = String> + 'static) -> BoxedStrategy<Value> {
    s.prop_map(Value::String).boxed()
}

fn plugin_id() -> impl Strategy<Value = String> {
    prop_oneof![
        10 => "[a-zA-Z0-9_-]{1,12}",
        1 => Just("demo".to_owned()),
        1 => prop::sample::select(vec!["", "../etc", "a/b", "a b", ".", "..", "é", "\u{0}"])
            .prop_map(str::to_owned),
    ]
}

fn int(range: std::ops::Range<i64>) -> BoxedStrategy<Value> {
    prop_oneof![
        4 => range.prop_map(Value::Integer),
        1 => prop::sample::select(vec![-1i64, 0, i64::MAX, i64::MIN, u32::MAX as i64 + 1])
            .prop_map(Value::Integer),
    ]
    .boxed()
}

fn number() -> BoxedStrategy<Value> {
    prop_oneof![
        3 => (0.0f64..10.0).prop_map(Value::Float),
        1 => (0i64..10).prop_map(Value::Integer),
        1 => prop::sample::select(vec![f64::NAN, f64::INFINITY, -1.0, 1e308])
            .prop_map(Value::Float),
    ]
    .boxed()
}

fn strings() -> BoxedStrategy<Value> {
    prop_oneof![
        proptest::collection::vec("\\PC{0,10}".prop_map(Value::String), 0..4)
            .prop_map(Value::Array),
        "\\PC{0,16}".prop_map(Value::String),
    ]
    .boxed()
}

/// Inserts the present keys of `fields` into a table, plus up to two random extra keys.
fn table(fields: Vec<(&'static str, BoxedStrategy<Option<Value>>)>) -> BoxedStrategy<Table> {
    let (names, values): (Vec<_>, Vec<_>) = fields.into_iter().unzip();
    let extra = proptest::collection::vec(("[a-z_]{1,10}", toml_value()), 0..2);
    (values, extra)
        .prop_map(move |(values, extra)| {
            let mut t = Table::new();
            for (k, v) in names.iter().zip(values) {
                if let Some(v) = v {
                    t.insert((*k).to_owned(), v);
                }
            }
            for (k, v) in extra {
                t.entry(k).or_insert(v);
            }
            t
        })
        .boxed()
}

fn sdk_table() -> BoxedStrategy<Table> {
    let spec = || maybe(string(spec_text()));
    table(vec![
        ("supported", spec()),
        ("compatible", spec()),
        ("recommended", spec()),
        ("untested", spec()),
        (
            "conflicts",
            maybe(
                proptest::collection::vec(spec_text().prop_map(Value::String), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ])
}

fn dependency_table() -> BoxedStrategy<Table> {
    let spec = || maybe(string(spec_text()));
    let colon = || {
        maybe(string(
            "[a-z]{0,4}(:[a-z]{0,4}){0,3}".prop_map(|s: String| s),
        ))
    };
    table(vec![
        ("id", maybe(string(plugin_id()))),
        ("entry", colon()),
        ("custom_event", colon()),
        ("providers", maybe(strings())),
        ("recommended", spec()),
        ("supported", spec()),
        ("untested", spec()),
        (
            "conflicts",
            maybe(
                prop_oneof![
                    any::<bool>().prop_map(Value::Boolean),
                    spec_text().prop_map(Value::String),
                    proptest::collection::vec(spec_text().prop_map(Value::String), 0..3)
                        .prop_map(Value::Array),
                ]
                .boxed(),
            ),
        ),
    ])
}

fn entry_item() -> BoxedStrategy<Value> {
    prop_oneof![
        "\\PC{0,8}".prop_map(Value::String),
        table(vec![
            ("id", maybe(string("\\PC{0,8}"))),
            ("name", maybe(string("\\PC{0,8}"))),
            ("description", maybe(string("\\PC{0,8}"))),
            ("kind", maybe(string("action|service|hook|\\PC{0,4}"))),
            ("input_schema", maybe(toml_value().boxed())),
            ("timeout_ms", maybe(int(-5..100_000))),
            ("timeout", maybe(number())),
        ])
        .prop_map(Value::Table),
        toml_value(),
    ]
    .boxed()
}

fn runtime_table() -> BoxedStrategy<Table> {
    let flag = || {
        maybe(
            prop_oneof![
                any::<bool>().prop_map(Value::Boolean),
                prop::sample::select(vec!["yes", "off", "1", "TRUE", "maybe", ""])
                    .prop_map(|s| Value::String(s.to_owned())),
            ]
            .boxed(),
        )
    };
    let ms = || maybe(int(0..100_000));
    table(vec![
        ("enabled", flag()),
        ("auto_start", flag()),
        (
            "restart",
            maybe(string(
                prop::sample::select(vec![
                    "permanent",
                    "transient",
                    "temporary",
                    " Permanent ",
                    "never",
                ])
                .prop_map(str::to_owned),
            )),
        ),
        ("max_restarts", maybe(int(0..10))),
        ("restart_window_ms", ms()),
        ("backoff_initial_ms", ms()),
        ("backoff_max_ms", ms()),
        ("backoff_multiplier", maybe(number())),
        ("jitter", maybe(number())),
        ("start_window_ms", ms()),
    ])
}

/// A whole manifest, as a TOML table.
fn manifest() -> BoxedStrategy<Table> {
    let sub = |t: BoxedStrategy<Table>| maybe(t.prop_map(Value::Table).boxed());
    let dependency = maybe(
        prop_oneof![
            3 => proptest::collection::vec(dependency_table().prop_map(Value::Table), 0..3)
                .prop_map(Value::Array),
            1 => dependency_table().prop_map(Value::Table),
        ]
        .boxed(),
    );
    let plugin = table(vec![
        ("id", required(string(plugin_id()))),
        ("name", maybe(string("\\PC{0,12}"))),
        ("description", maybe(string("\\PC{0,12}"))),
        ("version", maybe(string(version_text()))),
        (
            "runtime",
            maybe(string(
                prop_oneof![
                    8 => prop::sample::select(vec!["python", "native"]),
                    1 => prop::sample::select(vec!["Native", "wasm", ""]),
                ]
                .prop_map(str::to_owned),
            )),
        ),
        (
            "entry",
            required(string(prop_oneof![
                8 => "plugins\\.[a-z]{1,5}:[A-Z][a-z]{0,5}",
                1 => "\\PC{0,10}",
            ])),
        ),
        ("command", required(string("[a-z/._-]{1,12}"))),
        ("args", maybe(strings())),
        ("build", maybe(strings())),
        ("sdk", sub(sdk_table())),
        ("dependency", dependency),
        (
            "safety",
            sub(table(vec![
                (
                    "reentrant",
                    maybe(any::<bool>().prop_map(Value::Boolean).boxed()),
                ),
                (
                    "sync_call_in_handler",
                    maybe(string("warn|reject|allow|\\PC{0,4}")),
                ),
            ])),
        ),
        (
            "author",
            sub(table(vec![
                ("name", maybe(string("\\PC{0,8}"))),
                ("email", maybe(string("\\PC{0,8}"))),
            ])),
        ),
        (
            "entries",
            maybe(
                proptest::collection::vec(entry_item(), 0..4)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ]);
    table(vec![
        ("plugin", required(plugin.prop_map(Value::Table).boxed())),
        ("plugin_runtime", sub(runtime_table())),
        (
            "entries",
            maybe(
                proptest::collection::vec(entry_item(), 0..3)
                    .prop_map(Value::Array)
                    .boxed(),
            ),
        ),
    ])
}

/// One character-level edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    Duplicate(usize, usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        prop::sample::select(vec![
            "[",
            "]",
            "[[",
            "]]",
            "=",
            "\"",
            "'",
            "\"\"\"",
            "\n",
            "#",
            ",",
            "{",
            "}",
            ".",
            "\\",
            "\\u",
            "[plugin]\n",
            "[plugin.sdk]\n",
            "[[plugin.dependency]]\n",
            "[plugin_runtime]\n",
            "id = ",
            "= \"x\"\n",
            "nan",
            "inf",
            "1979-05-27",
            "0x",
            "1e999",
            "\u{0}",
            "\u{feff}",
        ])
        .prop_map(str::to_owned),
        "\\PC{1,4}",
    ];
    prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), snippet).prop_map(|(i, s)| Edit::Insert(i, s)),
        (any::<usize>(), 1usize..40).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edit: &Edit) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    let len = chars.len();
    let at = |i: usize| if len == 0 { 0 } else { i % (len + 1) };
    match edit {
        Edit::Delete(i, n) => {
            let i = at(*i);
            chars.drain(i..(i + n).min(len));
        }
        Edit::Insert(i, s) => {
            let i = at(*i);
            chars.splice(i..i, s.chars());
        }
        Edit::Duplicate(i, n) => {
            let i = at(*i);
            let span: Vec<char> = chars[i..(i + n).min(len)].to_vec();
            chars.splice(i..i, span);
        }
        Edit::Truncate(i) => chars.truncate(at(*i)),
    }
    chars.into_iter().collect()
}

/// Any text at all.
#[test]
fn arbitrary_text_is_a_manifest_or_an_error() {
    TestRunner::new(config(2000))
        .run(&"\\PC{0,200}|(?s).{0,200}", |text| check(&text))
        .unwrap();
}

/// Lines that look like TOML: headers, keys, values of every kind, broken quoting.
#[test]
fn toml_line_soup_is_a_manifest_or_an_error() {
    let line = prop_oneof![
        prop::sample::select(vec![
            "[plugin]",
            "[plugin.sdk]",
            "[[plugin.dependency]]",
            "[plugin.safety]",
            "[plugin.author]",
            "[plugin_runtime]",
            "[[entries]]",
            "[[plugin.entries]]",
            "[plugin.entries]",
            "[plugin",
            "plugin]",
            "[[plugin]]",
            "id = \"demo\"",
            "entry = \"plugins.demo:Demo\"",
            "runtime = \"native\"",
            "command = \"x\"",
        ])
        .prop_map(str::to_owned),
        (
            prop::sample::select(vec![
                "id",
                "name",
                "version",
                "runtime",
                "entry",
                "command",
                "args",
                "build",
                "supported",
                "untested",
                "conflicts",
                "reentrant",
                "enabled",
                "auto_start",
                "restart",
                "max_restarts",
                "jitter",
                "timeout",
                "timeout_ms",
                "entries",
                "sdk",
                "dependency",
                "plugin",
                "plugin.id",
                "\"quoted key\"",
            ]),
            prop_oneof![
                Just("\"demo\"".to_owned()),
                spec_text().prop_map(|s| format!("{s:?}")),
                any::<i64>().prop_map(|n| n.to_string()),
                Just("nan".to_owned()),
                Just("-inf".to_owned()),
                Just("[1, \"a\", [true]]".to_owned()),
                Just("{ a = 1 }".to_owned()),
                Just("1979-05-27T07:32:00".to_owned()),
                "\\PC{0,10}",
            ],
        )
            .prop_map(|(k, v)| format!("{k} = {v}")),
        "\\PC{0,20}",
    ];
    TestRunner::new(config(2000))
        .run(&proptest::collection::vec(line, 0..16), |lines| {
            check(&lines.join("\n"))
        })
        .unwrap();
}

/// Structured manifests with right, missing and wrongly typed keys everywhere.
#[test]
fn structured_manifests_are_manifests_or_errors() {
    let accepted = std::cell::Cell::new(0u32);
    TestRunner::new(config(400))
        .run(&manifest(), |table| {
            let text = toml::to_string(&table).map_err(|e| TestCaseError::reject(e.to_string()))?;
            match parse_manifest(&text, Path::new(PATH)) {
                Ok(_) => accepted.set(accepted.get() + 1),
                Err(e) if std::env::var_os("SHOWERR").is_some() => {
                    eprintln!("ERR {}", e.to_string().chars().take(70).collect::<String>())
                }
                Err(_) => {}
            }
            check(&text)
        })
        .unwrap();
    eprintln!(
        "{} of {} generated manifests were valid",
        accepted.get(),
        cases(400)
    );
    assert!(accepted.get() > 0, "no generated manifest was ever valid");
}

/// Serialised manifests mutated a few characters at a time.
#[test]
fn mutated_manifests_are_manifests_or_errors() {
    let strategy = (manifest(), proptest::collection::vec(edit(), 1..5));
    TestRunner::new(config(400))
        .run(&strategy, |(table, edits)| {
            let mut text =
                toml::to_string(&table).map_err(|e| TestCaseError::reject(e.to_string()))?;
            for e in &edits {
                text = apply(&text, e);
            }
            check(&text)
        })
        .unwrap();
}

/// The bundled manifests, mutated.
#[test]
fn mutated_bundled_manifests_are_manifests_or_errors() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    let seeds: Vec<String> = ["echo", "hello", "crashy"]
        .iter()
        .filter_map(|d| std::fs::read_to_string(root.join(d).join("plugin.toml")).ok())
        .collect();
    assert!(!seeds.is_empty(), "bundled plugin.toml files not found");
    for s in &seeds {
        parse_manifest(s, Path::new(PATH)).expect("bundled manifest parses");
    }
    let strategy = (
        prop::sample::select(seeds),
        proptest::collection::vec(edit(), 1..6),
    );
    TestRunner::new(config(1500))
        .run(&strategy, |(seed, edits)| {
            let mut text = seed;
            for e in &edits {
                text = apply(&text, e);
            }
            check(&text)
        })
        .unwrap();
}

/// Specifier sets and versions from the grammar: a bool or an error, never a panic; and the SDK
/// range check with every combination of ranges.
#[test]
fn version_specifiers_match_or_error() {
    let opt = || proptest::option::of(spec_text());
    let strategy = (
        spec_text(),
        version_text(),
        (
            opt(),
            opt(),
            opt(),
            proptest::collection::vec(spec_text(), 0..2),
        ),
    );
    TestRunner::new(config(3000))
        .run(
            &strategy,
            |(spec, version, (recommended, supported, untested, conflicts))| {
                let _ = version_matches(&spec, &version);
                let ranges = SdkRanges {
                    recommended,
                    supported,
                    untested,
                    conflicts,
                };
                let _ = ranges.check(&version);
                let _ = ranges.check("0.1.0");
                Ok(())
            },
        )
        .unwrap();
}

/// Absurd nesting and sizes: an error or a manifest, no stack overflow.
#[test]
fn deep_nesting_is_an_error() {
    let base = "[plugin]\nid = \"demo\"\nentry = \"plugins.demo:Demo\"\n";
    for depth in [10, 100, 1_000, 10_000, 100_000] {
        let arrays = format!("{base}x = {}{}\n", "[".repeat(depth), "]".repeat(depth));
        let _ = parse_manifest(&arrays, Path::new(PATH));
        let inline = format!("{base}x = {}{}\n", "{a = ".repeat(depth), "}".repeat(depth));
        let _ = parse_manifest(&inline, Path::new(PATH));
        let schema = format!(
            "{base}entries = [{{ id = \"e\", input_schema = {}1{} }}]\n",
            "{a = ".repeat(depth),
            "}".repeat(depth)
        );
        let _ = parse_manifest(&schema, Path::new(PATH));
        let dotted = format!("{base}{} = 1\n", vec!["k"; depth].join("."));
        let _ = parse_manifest(&dotted, Path::new(PATH));
    }
    let long = format!("{base}description = \"{}\"\n", "x".repeat(4 << 20));
    parse_manifest(&long, Path::new(PATH)).expect("a long description is fine");
}

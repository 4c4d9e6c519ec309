//! `bus.replay`: evaluates a query plan (what the SDK's `BusList.reload` sends) against a store.
//!
//! A plan is a tree (v1 reference §9.3):
//! - `{"kind":"get","params":{"params":{…}}}`: `get_recent` on the topic (default `"all"`) when no
//!   filter is given, else `query`; limit default 200, capped.
//! - `{"kind":"unary","op":…,"params":{…},"child":node}`: `limit`, `sort`, `filter`, `where_eq`,
//!   `where_in`, `where_contains`, `where_regex`.
//! - `{"kind":"binary","op":"merge"|"intersection"|"difference","left":…,"right":…}`: identity is
//!   `index.id` when it is a non-empty string, else `seq`; results newest (highest seq) first.
//!
//! Fields are looked up in the index, then the payload (and, for `sort`, the event itself).
//! Lenient parameters are read the way Python's `int()`/`float()`/`str()` read them.
//!
//! Regular expressions: patterns longer than 128 characters are refused, subjects are cut to 1024
//! characters. The reference bounds matching time with a 20 ms timeout; Rust's `regex` matches in
//! linear time, so a compiled-size limit is enough. A refused pattern (too long, invalid, too big)
//! matches nothing when the filter is strict and is ignored when it is not.
//!
//! The plan is parsed (and refused as "unsupported plan") before it reaches the store actor, and is
//! bounded: at most [`MAX_PLAN_DEPTH`] levels and [`MAX_PLAN_NODES`] nodes.

use std::cmp::Ordering;
use std::collections::HashSet;

use regex::{Regex, RegexBuilder};
use rmpv::Value;

use super::codec::{self, py_eq, py_float, py_int, py_str, py_truthy};
use super::store::{Event, QueryFilter, Store};

/// Deepest plan accepted.
pub const MAX_PLAN_DEPTH: usize = 16;
/// Most nodes in a plan (a binary tree of full depth would run ~65k store reads).
pub const MAX_PLAN_NODES: usize = 128;
/// Longest pattern, in characters.
pub const MAX_PATTERN_CHARS: usize = 128;
/// Longest subject a pattern is matched against, in characters.
pub const MAX_SUBJECT_CHARS: usize = 1024;
/// Compiled size a pattern may reach.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
const DEFAULT_SORT: [&str; 3] = ["timestamp", "created_at", "time"];
const INDEX_KEYS: [&str; 7] = [
    "plugin_id",
    "source",
    "priority",
    "kind",
    "type",
    "timestamp",
    "id",
];

/// The plan cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported plan")]
pub struct Unsupported;

/// A parsed plan.
#[derive(Debug, Clone)]
pub enum Plan {
    Get(GetNode),
    Unary(UnaryOp, Box<Plan>),
    Binary(BinaryOp, Box<Plan>, Box<Plan>),
}

/// A `get` leaf.
#[derive(Debug, Clone)]
pub struct GetNode {
    topic: String,
    /// Negative or zero reads nothing.
    limit: i64,
    plugin_id: Option<String>,
    source: Option<String>,
    kind: Option<String>,
    record_type: Option<String>,
    /// Given at all (even unreadable): the reference then queries instead of reading the tail.
    priority_given: bool,
    priority_min: Option<i64>,
    since_given: bool,
    since_ts: Option<f64>,
}

#[derive(Debug, Clone)]
pub enum UnaryOp {
    Limit(i64),
    Sort {
        by: Vec<String>,
        reverse: bool,
    },
    Filter(Box<Filter>),
    WhereEq {
        field: String,
        value: Value,
    },
    WhereIn {
        field: String,
        values: Vec<Value>,
    },
    WhereContains {
        field: String,
        value: String,
    },
    WhereRegex {
        field: String,
        pattern: Pattern,
    },
    /// A `where_*` whose field (or value) is empty: the items pass unchanged.
    Pass,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BinaryOp {
    Merge,
    Intersection,
    Difference,
}

/// The `filter` op's parameters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    plugin_id: Option<Value>,
    source: Option<Value>,
    kind: Option<Value>,
    record_type: Option<Value>,
    priority_min: Option<i64>,
    since_ts: Option<f64>,
    until_ts: Option<f64>,
    /// (index field, pattern) for `plugin_id_re`, `source_re`, `kind_re`, `type_re`.
    field_res: Vec<(&'static str, Pattern)>,
    content_re: Option<Pattern>,
}

/// A user pattern after the safety rules.
#[derive(Debug, Clone)]
pub enum Pattern {
    /// Refused, not strict: the filter is ignored.
    Ignore,
    /// Refused, strict: nothing matches.
    Refuse,
    Re(Regex),
}

impl Pattern {
    fn compile(pattern: &str, strict: bool) -> Self {
        let refused = if strict {
            Pattern::Refuse
        } else {
            Pattern::Ignore
        };
        if pattern.chars().count() > MAX_PATTERN_CHARS {
            return refused;
        }
        match RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_SIZE_LIMIT)
            .build()
        {
            Ok(re) => Pattern::Re(re),
            Err(_) => refused,
        }
    }

    /// `Some(matched)`, or `None` when the pattern is to be ignored.
    fn verdict(&self, subject: &str) -> Option<bool> {
        match self {
            Pattern::Ignore => None,
            Pattern::Refuse => Some(false),
            Pattern::Re(re) => Some(re.is_match(truncate_chars(subject, MAX_SUBJECT_CHARS))),
        }
    }
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Python's `d.get(key)` on a msgpack map value (last occurrence wins).
fn get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .rev()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

/// `d.get(key)` that treats nil as absent.
fn given<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    get(map, key).filter(|v| !v.is_nil())
}

/// `str(d.get(key) or "")`.
fn str_or_empty(map: &[(Value, Value)], key: &str) -> String {
    match get(map, key) {
        Some(v) if py_truthy(v) => py_str(v),
        _ => String::new(),
    }
}

/// A non-blank string argument, as given.
fn non_blank(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.trim().is_empty())
        .map(str::to_owned)
}

impl Plan {
    /// Parses a plan node; `max_limit` caps a `get`'s limit.
    pub fn parse(node: &Value, max_limit: usize) -> Result<Plan, Unsupported> {
        let mut nodes = 0;
        Self::parse_node(node, max_limit, 0, &mut nodes)
    }

    fn parse_node(
        node: &Value,
        max_limit: usize,
        depth: usize,
        nodes: &mut usize,
    ) -> Result<Plan, Unsupported> {
        *nodes += 1;
        if depth > MAX_PLAN_DEPTH || *nodes > MAX_PLAN_NODES {
            return Err(Unsupported);
        }
        let Value::Map(node) = node else {
            return Err(Unsupported);
        };
        let empty = Vec::new();
        let params = match get(node, "params") {
            Some(Value::Map(m)) => m,
            _ => &empty,
        };
        let op = str_or_empty(node, "op");
        let child = |key: &str, nodes: &mut usize| {
            Self::parse_node(
                get(node, key).unwrap_or(&Value::Nil),
                max_limit,
                depth + 1,
                nodes,
            )
            .map(Box::new)
        };
        match get(node, "kind").and_then(Value::as_str) {
            Some("get") => Ok(Plan::Get(GetNode::parse(params, max_limit))),
            Some("unary") => {
                let child = child("child", nodes)?;
                Ok(Plan::Unary(UnaryOp::parse(&op, params)?, child))
            }
            Some("binary") => {
                let left = child("left", nodes)?;
                let right = child("right", nodes)?;
                let op = match op.as_str() {
                    "merge" => BinaryOp::Merge,
                    "intersection" => BinaryOp::Intersection,
                    "difference" => BinaryOp::Difference,
                    _ => return Err(Unsupported),
                };
                Ok(Plan::Binary(op, left, right))
            }
            _ => Err(Unsupported),
        }
    }

    /// Evaluates the plan against the store.
    pub fn eval<'s>(&self, store: &'s Store) -> Vec<&'s Event> {
        match self {
            Plan::Get(g) => g.eval(store),
            Plan::Unary(op, child) => op.apply(child.eval(store)),
            Plan::Binary(op, left, right) => op.apply(left.eval(store), right.eval(store)),
        }
    }
}

impl GetNode {
    fn parse(params: &[(Value, Value)], max_limit: usize) -> Self {
        let empty = Vec::new();
        let p = match get(params, "params") {
            Some(Value::Map(m)) => m,
            _ => &empty,
        };
        // `p.get("max_count", p.get("limit", 200))`: a present key wins even when unreadable.
        let limit = match get(p, "max_count").or_else(|| get(p, "limit")) {
            None => 200,
            Some(v) => py_int(v).unwrap_or(200),
        }
        .min(i64::try_from(max_limit).unwrap_or(i64::MAX));
        let topic = match given(p, "topic") {
            Some(v) => py_str(v),
            None => String::new(),
        };
        Self {
            topic: if topic.is_empty() {
                "all".into()
            } else {
                topic
            },
            limit,
            plugin_id: non_blank(get(p, "plugin_id")),
            source: non_blank(get(p, "source")),
            kind: non_blank(get(p, "kind")),
            record_type: non_blank(get(p, "type")),
            priority_given: given(p, "priority_min").is_some(),
            priority_min: given(p, "priority_min").and_then(py_int),
            since_given: given(p, "since_ts").is_some(),
            since_ts: given(p, "since_ts").and_then(py_float),
        }
    }

    fn eval<'s>(&self, store: &'s Store) -> Vec<&'s Event> {
        let limit = usize::try_from(self.limit).unwrap_or(0);
        let unfiltered = self.plugin_id.is_none()
            && self.source.is_none()
            && self.kind.is_none()
            && self.record_type.is_none()
            && !self.priority_given
            && !self.since_given;
        if unfiltered {
            return store.recent_refs(&self.topic, limit);
        }
        store.query_refs(&QueryFilter {
            topic: Some(self.topic.clone()),
            plugin_id: self.plugin_id.clone(),
            source: self.source.clone(),
            kind: self.kind.clone(),
            record_type: self.record_type.clone(),
            priority_min: self.priority_min,
            since_ts: self.since_ts,
            until_ts: None,
            limit,
        })
    }
}

/// `str(params.get("field") or "").strip()`.
fn field_param(params: &[(Value, Value)]) -> String {
    str_or_empty(params, "field").trim().to_owned()
}

impl UnaryOp {
    fn parse(op: &str, params: &[(Value, Value)]) -> Result<Self, Unsupported> {
        Ok(match op {
            "limit" => UnaryOp::Limit(match get(params, "n") {
                Some(v) if py_truthy(v) => py_int(v).unwrap_or(0),
                _ => 0,
            }),
            "sort" => {
                let by = match get(params, "by") {
                    Some(Value::String(s)) => vec![py_str(&Value::String(s.clone()))],
                    Some(Value::Array(a)) => a.iter().map(py_str).collect(),
                    _ => DEFAULT_SORT.iter().map(|s| s.to_string()).collect(),
                };
                let reverse = get(params, "reverse").is_some_and(py_truthy);
                UnaryOp::Sort { by, reverse }
            }
            "filter" => UnaryOp::Filter(Box::new(Filter::parse(params))),
            "where_eq" => {
                let field = field_param(params);
                if field.is_empty() {
                    UnaryOp::Pass
                } else {
                    let value = get(params, "value").cloned().unwrap_or(Value::Nil);
                    UnaryOp::WhereEq { field, value }
                }
            }
            "where_in" => match (field_param(params), get(params, "values")) {
                (field, Some(Value::Array(values))) if !field.is_empty() => UnaryOp::WhereIn {
                    field,
                    values: values.clone(),
                },
                _ => UnaryOp::Pass,
            },
            "where_contains" => {
                let field = field_param(params);
                let value = str_or_empty(params, "value");
                if field.is_empty() || value.is_empty() {
                    UnaryOp::Pass
                } else {
                    UnaryOp::WhereContains { field, value }
                }
            }
            "where_regex" => {
                let field = field_param(params);
                let pattern = str_or_empty(params, "pattern");
                if field.is_empty() || pattern.is_empty() {
                    UnaryOp::Pass
                } else {
                    let strict = get(params, "strict").is_none_or(py_truthy);
                    let pattern = Pattern::compile(&pattern, strict);
                    UnaryOp::WhereRegex { field, pattern }
                }
            }
            _ => return Err(Unsupported),
        })
    }

    fn apply<'s>(&self, items: Vec<&'s Event>) -> Vec<&'s Event> {
        match self {
            UnaryOp::Pass => items,
            UnaryOp::Limit(n) => {
                let mut items = items;
                items.truncate(usize::try_from(*n).unwrap_or(0));
                items
            }
            UnaryOp::Sort { by, reverse } => sort(items, by, *reverse),
            UnaryOp::Filter(f) => items.into_iter().filter(|e| f.matches(e)).collect(),
            UnaryOp::WhereEq { field, value } => items
                .into_iter()
                .filter(|e| py_eq(&lookup(e, field), value))
                .collect(),
            UnaryOp::WhereIn { field, values } => items
                .into_iter()
                .filter(|e| {
                    let got = lookup(e, field);
                    values.iter().any(|v| py_eq(&got, v))
                })
                .collect(),
            UnaryOp::WhereContains { field, value } => items
                .into_iter()
                .filter(|e| subject(&lookup(e, field)).contains(value.as_str()))
                .collect(),
            UnaryOp::WhereRegex { field, pattern } => match pattern {
                Pattern::Ignore => items,
                Pattern::Refuse => Vec::new(),
                Pattern::Re(_) => items
                    .into_iter()
                    .filter(|e| pattern.verdict(&subject(&lookup(e, field))) == Some(true))
                    .collect(),
            },
        }
    }
}

impl Filter {
    fn parse(params: &[(Value, Value)]) -> Self {
        // `strict` is read before `flt` is merged in; `flt`'s keys override the others.
        let strict = get(params, "strict").is_none_or(py_truthy);
        let mut merged: Vec<(Value, Value)> = params.to_vec();
        if let Some(Value::Map(flt)) = get(params, "flt") {
            merged.extend(flt.iter().cloned());
        }
        let p = merged.as_slice();
        let pattern = |key: &str| match get(p, key) {
            Some(Value::String(s)) => s
                .as_str()
                .filter(|s| !s.is_empty())
                .map(|s| Pattern::compile(s, strict)),
            _ => None,
        };
        let field_res = [
            ("plugin_id", "plugin_id_re"),
            ("source", "source_re"),
            ("kind", "kind_re"),
            ("type", "type_re"),
        ]
        .into_iter()
        .filter_map(|(field, key)| pattern(key).map(|pat| (field, pat)))
        .collect();
        Self {
            plugin_id: given(p, "plugin_id").cloned(),
            source: given(p, "source").cloned(),
            kind: given(p, "kind").cloned(),
            record_type: given(p, "type").cloned(),
            priority_min: given(p, "priority_min").and_then(py_int),
            since_ts: given(p, "since_ts").and_then(py_float),
            until_ts: given(p, "until_ts").and_then(py_float),
            field_res,
            content_re: pattern("content_re"),
        }
    }

    fn matches(&self, e: &Event) -> bool {
        // Exact matches: the index field, else the payload's.
        let exact = [
            ("plugin_id", &self.plugin_id),
            ("source", &self.source),
            ("kind", &self.kind),
            ("type", &self.record_type),
        ];
        for (key, want) in exact {
            let Some(want) = want else { continue };
            if py_eq(&index_value(e, key).unwrap_or(Value::Nil), want) {
                continue;
            }
            if payload_value(e, key).is_some_and(|v| py_eq(&v, want)) {
                continue;
            }
            return false;
        }
        if self.priority_min.is_some_and(|m| e.priority() < m) {
            return false;
        }
        let t = e.timestamp();
        if self.since_ts.is_some_and(|s| t < s) || self.until_ts.is_some_and(|u| t > u) {
            return false;
        }
        for (key, pattern) in &self.field_res {
            let val = match index_value(e, key) {
                Some(v) if !v.is_nil() => v,
                _ => payload_value(e, key).unwrap_or(Value::Nil),
            };
            if pattern.verdict(&subject(&val)) == Some(false) {
                return false;
            }
        }
        if let Some(pattern) = &self.content_re {
            let content = payload_value(e, "content").unwrap_or(Value::Nil);
            if pattern.verdict(&subject(&content)) == Some(false) {
                return false;
            }
        }
        true
    }
}

impl BinaryOp {
    fn apply<'s>(self, left: Vec<&'s Event>, right: Vec<&'s Event>) -> Vec<&'s Event> {
        let mut seen = HashSet::new();
        let mut out: Vec<&Event> = match self {
            BinaryOp::Merge => left
                .into_iter()
                .chain(right)
                .filter(|e| seen.insert(identity(e)))
                .collect(),
            BinaryOp::Intersection | BinaryOp::Difference => {
                let keep = self == BinaryOp::Intersection;
                let right: HashSet<Identity<'_>> = right.iter().map(|e| identity(e)).collect();
                left.into_iter()
                    .filter(|e| {
                        let k = identity(e);
                        right.contains(&k) == keep && seen.insert(k)
                    })
                    .collect()
            }
        };
        // Stable, so equal seqs keep their order as in the reference.
        out.sort_by_key(|e| std::cmp::Reverse(e.seq()));
        out
    }
}

/// What makes two events the same record for the set operations.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Identity<'a> {
    Id(&'a str),
    Seq(u64),
}

fn identity(e: &Event) -> Identity<'_> {
    match e.id() {
        Some(id) if !id.is_empty() => Identity::Id(id),
        _ => Identity::Seq(e.seq()),
    }
}

/// An index field (`None` if `key` is not one; nil when the field is empty).
fn index_value(e: &Event, key: &str) -> Option<Value> {
    let s = |v: Option<&str>| v.map_or(Value::Nil, Value::from);
    Some(match key {
        "plugin_id" => s(e.plugin_id()),
        "source" => s(e.source()),
        "priority" => Value::from(e.priority()),
        "kind" => s(e.kind()),
        "type" => s(e.record_type()),
        "timestamp" => Value::F64(e.timestamp()),
        "id" => s(e.id()),
        _ => return None,
    })
}

/// A payload field (`None` if absent).
fn payload_value(e: &Event, key: &str) -> Option<Value> {
    codec::map_get(e.payload_msgpack(), key).map(codec::to_value)
}

/// A field as `where_*` reads it: the index's if it has the key, else the payload's, else nil.
fn lookup(e: &Event, field: &str) -> Value {
    index_value(e, field)
        .or_else(|| payload_value(e, field))
        .unwrap_or(Value::Nil)
}

/// `str(v or "")`: what patterns and substrings are matched against.
fn subject(v: &Value) -> String {
    if py_truthy(v) {
        py_str(v)
    } else {
        String::new()
    }
}

/// One part of a sort key: numbers before strings before missing, as the reference orders them.
#[derive(Debug, Clone, PartialEq)]
enum SortPart {
    Num(f64),
    Text(String),
    Missing,
}

impl SortPart {
    fn rank(&self) -> u8 {
        match self {
            SortPart::Num(_) => 0,
            SortPart::Text(_) => 1,
            SortPart::Missing => 2,
        }
    }

    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (SortPart::Num(a), SortPart::Num(b)) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
            (SortPart::Text(a), SortPart::Text(b)) => a.cmp(b),
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

fn sort_value(e: &Event, field: &str) -> SortPart {
    let v = index_value(e, field)
        .or_else(|| payload_value(e, field))
        .or_else(|| match field {
            "seq" => Some(Value::from(e.seq())),
            "ts" => Some(Value::F64(e.ts())),
            "store" => Some(Value::from(e.store().as_str())),
            "topic" => Some(Value::from(e.topic())),
            "payload" => Some(e.payload_value()),
            "index" => Some(Value::Map(
                INDEX_KEYS
                    .iter()
                    .map(|k| (Value::from(*k), index_value(e, k).unwrap_or(Value::Nil)))
                    .collect(),
            )),
            _ => None,
        });
    match v {
        None | Some(Value::Nil) => SortPart::Missing,
        Some(v @ (Value::Boolean(_) | Value::Integer(_) | Value::F32(_) | Value::F64(_))) => {
            SortPart::Num(py_float(&v).unwrap_or(f64::NAN))
        }
        Some(v) => SortPart::Text(py_str(&v)),
    }
}

fn sort<'s>(items: Vec<&'s Event>, by: &[String], reverse: bool) -> Vec<&'s Event> {
    let mut keyed: Vec<(Vec<SortPart>, &Event)> = items
        .into_iter()
        .map(|e| (by.iter().map(|f| sort_value(e, f)).collect(), e))
        .collect();
    let cmp = |a: &[SortPart], b: &[SortPart]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| x.cmp(y))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    };
    // Stable either way: equal keys keep their order, as Python's `sorted(reverse=True)` does.
    if reverse {
        keyed.sort_by(|(a, _), (b, _)| cmp(b, a));
    } else {
        keyed.sort_by(|(a, _), (b, _)| cmp(a, b));
    }
    keyed.into_iter().map(|(_, e)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message_plane::store::{Payload, StoreLimits, StoreName};
    use serde_json::{Value as J, json};

    fn store() -> Store {
        let mut s = Store::new(
            StoreName::Messages,
            StoreLimits {
                maxlen: 100,
                topic_max: 10,
                payload_max_bytes: 1 << 16,
            },
            0,
        );
        let records = [
            json!({"message_id": "m1", "plugin_id": "a", "source": "x", "priority": 1, "timestamp": 30.0, "content": "hello world"}),
            json!({"message_id": "m2", "plugin_id": "b", "source": "y", "priority": 5, "timestamp": 10.0, "content": "goodbye"}),
            json!({"message_id": "m3", "plugin_id": "a", "source": "y", "priority": 3, "timestamp": 20.0, "content": "hello again"}),
            json!({"plugin_id": "c", "priority": 0, "timestamp": "40", "content": 7}),
        ];
        for r in records {
            s.publish("all", Payload::from_json(&r), 100.0).unwrap();
        }
        s.publish(
            "other",
            Payload::from_json(&json!({"message_id": "o1", "plugin_id": "a"})),
            100.0,
        )
        .unwrap();
        s
    }

    fn run(s: &Store, plan: J) -> Result<Vec<u64>, Unsupported> {
        let plan = Plan::parse(&codec::json_to_value(plan), 1000)?;
        Ok(plan.eval(s).iter().map(|e| e.seq()).collect())
    }

    fn get(params: J) -> J {
        json!({"kind": "get", "params": {"params": params}})
    }

    fn unary(op: &str, params: J, child: J) -> J {
        json!({"kind": "unary", "op": op, "params": params, "child": child})
    }

    fn binary(op: &str, left: J, right: J) -> J {
        json!({"kind": "binary", "op": op, "left": left, "right": right})
    }

    /// A `get` without filters reads the tail of topic "all" oldest first; with filters it queries
    /// newest first; limits are capped and non-positive limits read nothing.
    #[test]
    fn get_reads_recent_or_queries() {
        let s = store();
        assert_eq!(run(&s, get(json!({}))).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(run(&s, get(json!({"max_count": 2}))).unwrap(), vec![3, 4]);
        assert_eq!(run(&s, get(json!({"limit": 2}))).unwrap(), vec![3, 4]);
        assert_eq!(
            run(&s, get(json!({"max_count": 0}))).unwrap(),
            Vec::<u64>::new()
        );
        assert_eq!(run(&s, get(json!({"topic": "other"}))).unwrap(), vec![5]);
        assert_eq!(run(&s, get(json!({"plugin_id": "a"}))).unwrap(), vec![3, 1]);
        assert_eq!(
            run(&s, get(json!({"priority_min": 3}))).unwrap(),
            vec![3, 2]
        );
        assert_eq!(run(&s, get(json!({"since_ts": 25}))).unwrap(), vec![4, 1]);
        // Blank strings are no filter.
        assert_eq!(
            run(&s, get(json!({"plugin_id": "  "}))).unwrap(),
            vec![1, 2, 3, 4]
        );
        let capped =
            Plan::parse(&codec::json_to_value(get(json!({"max_count": 5000}))), 2).unwrap();
        assert_eq!(capped.eval(&s).len(), 2);
    }

    /// limit, sort (numbers < strings < missing; reverse keeps ties stable) and the where_* ops.
    #[test]
    fn unary_ops() {
        let s = store();
        let all = get(json!({}));
        assert_eq!(
            run(&s, unary("limit", json!({"n": 2}), all.clone())).unwrap(),
            vec![1, 2]
        );
        assert_eq!(
            run(&s, unary("limit", json!({"n": "x"}), all.clone())).unwrap(),
            Vec::<u64>::new()
        );
        // Default sort is by index.timestamp: 30, 10, 20, 40 (the string "40" parsed at publish).
        assert_eq!(
            run(&s, unary("sort", json!({}), all.clone())).unwrap(),
            vec![2, 3, 1, 4]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "sort",
                    json!({"by": "priority", "reverse": true}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![2, 3, 1, 4]
        );
        // `content` is a number for seq 4, strings otherwise: numbers sort first.
        assert_eq!(
            run(&s, unary("sort", json!({"by": ["content"]}), all.clone())).unwrap(),
            vec![4, 2, 3, 1]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "where_eq",
                    json!({"field": "source", "value": "y"}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![2, 3]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "where_eq",
                    json!({"field": "content", "value": 7.0}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![4]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "where_in",
                    json!({"field": "plugin_id", "values": ["b", "c"]}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![2, 4]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "where_contains",
                    json!({"field": "content", "value": "hello"}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![1, 3]
        );
        assert_eq!(
            run(
                &s,
                unary(
                    "where_regex",
                    json!({"field": "content", "pattern": "^good"}),
                    all.clone()
                )
            )
            .unwrap(),
            vec![2]
        );
        // An empty field passes everything through.
        assert_eq!(
            run(&s, unary("where_eq", json!({"field": " "}), all.clone())).unwrap(),
            vec![1, 2, 3, 4]
        );
    }

    /// filter: exact fields (index then payload), priority, time range, regexes; `flt` merges in.
    #[test]
    fn filter_op() {
        let s = store();
        let all = get(json!({}));
        let f = |p: J| run(&s, unary("filter", p, get(json!({})))).unwrap();
        assert_eq!(f(json!({"plugin_id": "a"})), vec![1, 3]);
        assert_eq!(f(json!({"flt": {"source": "y"}})), vec![2, 3]);
        assert_eq!(f(json!({"priority_min": 2, "until_ts": 20})), vec![2, 3]);
        assert_eq!(f(json!({"since_ts": "bad"})), vec![1, 2, 3, 4]);
        assert_eq!(f(json!({"content_re": "wor.d"})), vec![1]);
        assert_eq!(f(json!({"plugin_id_re": "^[ab]$"})), vec![1, 2, 3]);
        // Content 7 is matched as "7".
        assert_eq!(f(json!({"content_re": "^7$"})), vec![4]);
        let _ = all;
    }

    /// Regex safety: long or invalid patterns match nothing when strict, are ignored otherwise;
    /// subjects are cut to 1024 characters.
    #[test]
    fn regex_safety_rules() {
        let mut s = store();
        let long = "x".repeat(2000) + "END";
        s.publish("all", Payload::from_json(&json!({"content": long})), 1.0)
            .unwrap();
        let all = get(json!({}));
        let long_pattern = "a".repeat(MAX_PATTERN_CHARS + 1);
        let f = |p: J| run(&s, unary("filter", p, all.clone())).unwrap();
        assert_eq!(f(json!({"content_re": long_pattern})), Vec::<u64>::new());
        assert_eq!(
            f(json!({"content_re": long_pattern, "strict": false})).len(),
            5
        );
        assert_eq!(f(json!({"content_re": "(unclosed"})), Vec::<u64>::new());
        assert_eq!(
            f(json!({"content_re": "(unclosed", "strict": false})).len(),
            5
        );
        // Lookaround is not supported by `regex`: refused like an invalid pattern.
        assert_eq!(f(json!({"content_re": "(?=x)"})), Vec::<u64>::new());
        assert_eq!(f(json!({"content_re": "END"})), Vec::<u64>::new());
        assert_eq!(f(json!({"content_re": "^x{1024}$"})), vec![6]);
        let w = |p: J| run(&s, unary("where_regex", p, all.clone())).unwrap();
        assert_eq!(
            w(json!({"field": "content", "pattern": long_pattern})),
            Vec::<u64>::new()
        );
        assert_eq!(
            w(json!({"field": "content", "pattern": long_pattern, "strict": false})).len(),
            5
        );
    }

    /// merge/intersection/difference dedupe by index.id else seq and return seq descending.
    #[test]
    fn binary_ops() {
        let s = store();
        let a = get(json!({"plugin_id": "a"})); // 3, 1
        let y = get(json!({"source": "y"})); // 3, 2
        assert_eq!(
            run(&s, binary("merge", a.clone(), y.clone())).unwrap(),
            vec![3, 2, 1]
        );
        assert_eq!(
            run(&s, binary("intersection", a.clone(), y.clone())).unwrap(),
            vec![3]
        );
        assert_eq!(
            run(&s, binary("difference", a.clone(), y.clone())).unwrap(),
            vec![1]
        );
        // Seq 4 has no id: identity falls back to seq.
        let all = get(json!({}));
        assert_eq!(
            run(&s, binary("merge", all.clone(), all.clone())).unwrap(),
            vec![4, 3, 2, 1]
        );
        assert_eq!(
            run(&s, binary("difference", all.clone(), a)).unwrap(),
            vec![4, 2]
        );
    }

    /// Unknown kinds and ops, non-map nodes, and over-deep plans are unsupported.
    #[test]
    fn unsupported_plans() {
        let s = store();
        assert!(run(&s, json!({"kind": "scan"})).is_err());
        assert!(run(&s, json!([1])).is_err());
        assert!(run(&s, unary("explode", json!({}), get(json!({})))).is_err());
        assert!(run(&s, binary("xor", get(json!({})), get(json!({})))).is_err());
        assert!(run(&s, unary("limit", json!({"n": 1}), json!(null))).is_err());
        let mut deep = get(json!({}));
        for _ in 0..=MAX_PLAN_DEPTH {
            deep = unary("limit", json!({"n": 5}), deep);
        }
        assert!(run(&s, deep).is_err());
        let mut wide = get(json!({}));
        for _ in 0..MAX_PLAN_DEPTH {
            wide = binary("merge", wide.clone(), wide);
        }
        assert!(run(&s, wide).is_err());
    }
}

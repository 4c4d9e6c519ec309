//! The admin bearer token: `NEKO_ADMIN_TOKEN` if set, else 40 random characters from `[A-Z0-9]`
//! (upper case, because the reference's clients upper-case what they send). Written to
//! `<data-dir>/admin-token` with mode 0600 so local tools can read it.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

/// Environment variable that fixes the token.
pub const ENV: &str = "NEKO_ADMIN_TOKEN";

/// Returns the token to use (from the environment or freshly generated).
pub fn obtain() -> anyhow::Result<String> {
    match std::env::var(ENV) {
        Ok(t) if t.trim().len() >= 8 => Ok(t.trim().to_string()),
        Ok(_) => anyhow::bail!("{ENV} must be at least 8 characters"),
        Err(_) => Ok(generate()),
    }
}

fn generate() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    (0..40)
        .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// Writes the token to `<data_dir>/admin-token` (0600), returning the path.
pub fn save(data_dir: &Path, token: &str) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    let path = data_dir.join("admin-token");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a new file; an older one is tightened too.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(f, "{token}")?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_long_upper_case_and_differ() {
        let a = generate();
        assert_eq!(a.len(), 40);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
        );
        assert_ne!(a, generate());
    }

    #[test]
    fn saved_token_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = save(&dir.path().join("d"), "TOKEN123").unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(std::fs::read_to_string(p).unwrap(), "TOKEN123\n");
    }
}

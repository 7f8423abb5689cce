//! Names that come from other people's files (hub listings, response headers, index files)
//! and become paths on this machine: they are checked here before they touch a path.

use anyhow::{bail, Result};
use std::path::{Component, Path};

/// A full git commit id: 40 lowercase hex digits.
pub fn is_commit_hash(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A file name inside a repository or model folder: a relative path of plain components
/// (no `..`, `.`, empty component, leading `/`, backslash, drive prefix or control
/// character). `what` names the source for the error ("the hub's listing", a file).
pub fn check_relative(name: &str, what: &str) -> Result<()> {
    let bad = |why: &str| -> Result<()> {
        bail!(
            "{what} names the file `{}`, which {why}; refused",
            name.escape_debug()
        )
    };
    if name.is_empty() {
        return bad("is empty");
    }
    if name.len() > 1024 {
        return bad("is longer than 1024 bytes");
    }
    if name.starts_with('/') {
        return bad("is an absolute path");
    }
    if name.contains('\\') {
        return bad("contains a backslash");
    }
    if name.chars().any(|c| c.is_control()) {
        return bad("contains a control character");
    }
    for part in name.split('/') {
        match part {
            "" => return bad("has an empty path component"),
            "." | ".." => return bad("leaves its folder (`.` or `..`)"),
            _ => {}
        }
    }
    // belt and braces: what the platform makes of it must be plain names only
    if !Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return bad("is not a plain relative path");
    }
    Ok(())
}

/// A single file name used as a blob name in a cache (an etag or a hash): ASCII letters,
/// digits, `-` and `_` only.
pub fn check_blob_name(name: &str, what: &str) -> Result<()> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        bail!(
            "{what} gives `{}` as a file's id, which is not a plain hash; refused",
            name.escape_debug()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_names() {
        for ok in [
            "config.json",
            "model-00001-of-00002.safetensors",
            "sub/dir/file.txt",
            "..hidden",
            "a..b",
        ] {
            check_relative(ok, "t").unwrap();
        }
        for bad in [
            "",
            "../evil",
            "a/../../evil",
            "/etc/passwd",
            "a\\b",
            "..\\evil",
            "a//b",
            "a/",
            "./a",
            "a/.",
            "..",
            "a\0b",
            "a\nb",
        ] {
            let e = check_relative(bad, "the listing").unwrap_err().to_string();
            assert!(
                e.contains("the listing") && e.contains("refused"),
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn commit_and_blob_names() {
        assert!(is_commit_hash("0123456789abcdef0123456789abcdef01234567"));
        for bad in [
            "main",
            "../../x",
            "0123456789ABCDEF0123456789abcdef01234567",
            "0123456789abcdef0123456789abcdef0123456",
            "0123456789abcdef0123456789abcdef012345678",
        ] {
            assert!(!is_commit_hash(bad), "{bad}");
        }
        check_blob_name(&"a".repeat(64), "t").unwrap();
        for bad in ["", "../x", "a/b", "a.b", "x y", "\"abc\""] {
            assert!(check_blob_name(bad, "t").is_err(), "{bad}");
        }
    }
}

//! What a name is in Shoal: node names, service names, zones, clusters and trust
//! domains all follow the same lowercase DNS-style rule, checked in one place so the
//! CA, the config loader and the wire decoders agree.
//!
//! A name is 1 to 253 bytes of dot-separated labels; each label is 1 to 63 of
//! `a-z`, `0-9` and `-`, and neither starts nor ends with `-`.

use thiserror::Error;

/// Longest name accepted anywhere (the DNS limit).
pub const MAX_NAME_LEN: usize = 253;
/// Longest label between two dots.
pub const MAX_LABEL_LEN: usize = 63;

/// Why a name was refused. The message names the offending part and the rule.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("{what} is empty; use lowercase letters, digits, '-' and '.'")]
    Empty {
        /// What kind of name was checked ("node name", "trust domain", ...).
        what: &'static str,
    },
    /// The name is longer than [`MAX_NAME_LEN`].
    #[error("{what} {name:?} is {len} bytes long; the limit is {MAX_NAME_LEN}")]
    TooLong {
        /// What kind of name was checked.
        what: &'static str,
        /// The refused name (cut to the limit).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A character outside `a-z 0-9 - .`.
    #[error(
        "{what} {name:?} contains {ch:?}; only lowercase letters, digits, '-' and '.' are allowed"
    )]
    BadChar {
        /// What kind of name was checked.
        what: &'static str,
        /// The refused name.
        name: String,
        /// The first character that is not allowed.
        ch: char,
    },
    /// An empty label (leading, trailing or doubled dot), an over-long label, or a
    /// label starting or ending with `-`.
    #[error(
        "{what} {name:?} has a bad label {label:?}: labels are 1 to {MAX_LABEL_LEN} characters and do not start or end with '-'"
    )]
    BadLabel {
        /// What kind of name was checked.
        what: &'static str,
        /// The refused name.
        name: String,
        /// The offending label.
        label: String,
    },
}

/// Checks `name` against the naming rule; `what` says what kind of name it is
/// (for example `"node name"`) and appears in the error message.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    if name.len() > MAX_NAME_LEN {
        let mut cut = MAX_NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(NameError::TooLong {
            what,
            name: name[..cut].to_string(),
            len: name.len(),
        });
    }
    if let Some(ch) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '.'))
    {
        return Err(NameError::BadChar {
            what,
            name: name.to_string(),
            ch,
        });
    }
    for label in name.split('.') {
        if label.is_empty()
            || label.len() > MAX_LABEL_LEN
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Err(NameError::BadLabel {
                what,
                name: name.to_string(),
                label: label.to_string(),
            });
        }
    }
    Ok(())
}

/// `true` when `name` follows the naming rule.
pub fn is_valid_name(name: &str) -> bool {
    validate_name("name", name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_style_names() {
        for ok in [
            "a",
            "web",
            "api-v2",
            "mesh.example.org",
            "0",
            "a1.b2-c3",
            &"x".repeat(63),
        ] {
            assert!(is_valid_name(ok), "{ok:?} should be valid");
        }
    }

    #[test]
    fn rejects_each_rule_with_its_own_error() {
        assert_eq!(
            validate_name("node name", ""),
            Err(NameError::Empty { what: "node name" })
        );
        assert!(matches!(
            validate_name("node name", "Web"),
            Err(NameError::BadChar { ch: 'W', .. })
        ));
        assert!(matches!(
            validate_name("node name", "a_b"),
            Err(NameError::BadChar { ch: '_', .. })
        ));
        assert!(matches!(
            validate_name("node name", "a/b"),
            Err(NameError::BadChar { ch: '/', .. })
        ));
        for bad in [".a", "a.", "a..b", "-a", "a-", "a.-b", &"x".repeat(64)] {
            assert!(
                matches!(validate_name("x", bad), Err(NameError::BadLabel { .. })),
                "{bad:?}"
            );
        }
        let long = ["a"; 127].join(".") + "b";
        assert!(matches!(
            validate_name("x", &long),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn message_names_the_field_and_the_rule() {
        let msg = validate_name("trust domain", "Mesh")
            .unwrap_err()
            .to_string();
        assert!(msg.contains("trust domain"), "{msg}");
        assert!(msg.contains("lowercase"), "{msg}");
    }
}

//! Validation of user-supplied build inputs. Each error names the field it refuses.

use crate::ids::check_name;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    #[error("commit {0:?} is invalid: expected a full SHA, 40 (or 64) lowercase hex characters")]
    Commit(String),
    #[error("repo {0:?} is invalid: {1}")]
    Repo(String, &'static str),
    #[error("service {0:?} is invalid: expected 1-63 characters of [a-z0-9-], starting with a letter or digit")]
    Service(String),
}

/// What an error shows of an input: its first 100 characters.
pub(crate) fn shown(s: &str) -> String {
    s.chars().take(100).collect()
}

pub fn check_commit(commit: &str) -> Result<(), InputError> {
    let ok = (commit.len() == 40 || commit.len() == 64)
        && commit
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then_some(())
        .ok_or_else(|| InputError::Commit(shown(commit)))
}

/// Checks a repository location's shape (see [`crate::repo::RepoUrl`]); whether the
/// cluster allows it is [`crate::repo::RepoPolicy::check`].
pub fn check_repo(repo: &str) -> Result<(), InputError> {
    crate::repo::RepoUrl::parse(repo)
        .map(|_| ())
        .map_err(|why| InputError::Repo(shown(repo), why))
}

pub fn check_service(service: &str) -> Result<(), InputError> {
    check_name("service", service).map_err(|_| InputError::Service(shown(service)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits() {
        assert!(check_commit(&"a".repeat(40)).is_ok());
        assert!(check_commit(&"0123456789abcdef".repeat(4)).is_ok());
        for bad in [
            "",
            "abc",
            &"A".repeat(40),
            &"g".repeat(40),
            &"a".repeat(41),
            "HEAD",
            "main",
        ] {
            assert!(check_commit(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn repos() {
        for good in [
            "/srv/git/app",
            "file:///srv/git/app",
            "https://example.com/a.git",
            "ssh://git@example.com/a.git",
        ] {
            assert!(check_repo(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "relative/path",
            "file://relative",
            "ftp://x/y",
            "-uoops",
            "/a b",
            "https://",
            "/",
        ] {
            assert!(check_repo(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn services() {
        assert!(check_service("hello").is_ok());
        assert!(check_service("Hello").is_err());
        let e = check_service("a_b").unwrap_err().to_string();
        assert!(e.contains("service"), "{e}");
    }
}

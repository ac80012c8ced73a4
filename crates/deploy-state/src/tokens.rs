//! API tokens: who may call what. Kept in the global group and copied to every region (as
//! decisions it pulls), so a region checks its operators' tokens while the global group is
//! down. Only a token's SHA-256 is kept; its text is shown once, when it is made.

use serde::{Deserialize, Serialize};

/// Tokens kept at most.
pub const MAX_TOKENS: usize = 10_000;
/// Services a releaser token may be limited to, at most.
pub const MAX_SERVICES: usize = 64;

/// The name of the config's bootstrap admin token, which the API cannot make or revoke.
pub const BOOTSTRAP_ADMIN: &str = "admin";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Queries only.
    Reader,
    /// Builds and releases (of its services, when it names some), and queries.
    Releaser,
    /// Everything: the cluster's membership and metadata, garbage collection, tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Releaser => "releaser",
            Role::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Role::Reader, Role::Releaser, Role::Admin]
            .into_iter()
            .find(|r| r.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// What decisions made with it record as their author.
    pub name: String,
    /// Hex SHA-256 of the token's text.
    pub sha256: String,
    pub role: Role,
    /// For a releaser: the only services it may build and release (empty: every one).
    pub services: Vec<String>,
    pub created_by: String,
    pub created_at_ms: u64,
}

impl Token {
    /// Whether it may build or release `service`.
    pub fn may_touch(&self, service: &str) -> bool {
        self.role == Role::Admin
            || self.services.is_empty()
            || self.services.iter().any(|s| s == service)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenChange {
    Set(Token),
    Revoke { name: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenCommand {
    Create {
        token: Token,
        /// The cluster's regions, stamped by the proposer: each gets a copy.
        regions: Vec<String>,
    },
    Revoke {
        name: String,
        by: String,
        now_ms: u64,
        regions: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum TokenError {
    #[error("{0}")]
    Invalid(String),
    #[error("a token named {0:?} exists already")]
    Exists(String),
    #[error("no token named {0:?}")]
    NotFound(String),
}

/// Every token, by name, and an index by hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tokens {
    pub by_name: imbl::OrdMap<String, Token>,
    pub by_hash: imbl::OrdMap<String, String>,
}

fn valid_name(kind: &str, n: &str) -> Result<(), TokenError> {
    if n.is_empty()
        || n.len() > 63
        || !n
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(TokenError::Invalid(format!(
            "{kind} {:?}: expected 1-63 of [a-z0-9-]",
            n.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// Checks a token before it is made: its name, hash, role and services.
pub fn check(t: &Token) -> Result<(), TokenError> {
    check_request(&t.name, t.role, &t.services)?;
    if t.sha256.len() != 64 || !t.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TokenError::Invalid(
            "the token's hash is not 64 hex characters".into(),
        ));
    }
    Ok(())
}

/// Checks what a caller asks a token to be (all of [`check`] but the hash, which the leader
/// makes): where a request comes in, before it is forwarded or proposed.
pub fn check_request(name: &str, role: Role, services: &[String]) -> Result<(), TokenError> {
    valid_name("token name", name)?;
    if name == BOOTSTRAP_ADMIN {
        return Err(TokenError::Invalid(format!(
            "{BOOTSTRAP_ADMIN:?} is the bootstrap admin's name (rotate it in the config)"
        )));
    }
    if services.len() > MAX_SERVICES {
        return Err(TokenError::Invalid(format!(
            "at most {MAX_SERVICES} services"
        )));
    }
    if !services.is_empty() && role != Role::Releaser {
        return Err(TokenError::Invalid(
            "only a releaser token is limited to services".into(),
        ));
    }
    for s in services {
        valid_name("service", s)?;
    }
    Ok(())
}

impl Tokens {
    /// The token whose text hashes to `sha256`.
    pub fn by_sha256(&self, sha256: &str) -> Option<&Token> {
        self.by_hash.get(sha256).and_then(|n| self.by_name.get(n))
    }

    /// Applies a change as the global group decided it (a region applies the same).
    pub fn change(&mut self, c: &TokenChange) {
        match c {
            TokenChange::Set(t) => {
                if let Some(old) = self.by_name.insert(t.name.clone(), t.clone()) {
                    self.by_hash.remove(&old.sha256);
                }
                self.by_hash.insert(t.sha256.clone(), t.name.clone());
            }
            TokenChange::Revoke { name } => {
                if let Some(old) = self.by_name.remove(name) {
                    self.by_hash.remove(&old.sha256);
                }
            }
        }
    }

    /// Checks a command against the tokens; on success, the change it makes.
    pub fn decide(&self, cmd: &TokenCommand) -> Result<TokenChange, TokenError> {
        match cmd {
            TokenCommand::Create { token, .. } => {
                check(token)?;
                if self.by_name.contains_key(&token.name) {
                    return Err(TokenError::Exists(token.name.clone()));
                }
                if self.by_hash.contains_key(&token.sha256) {
                    return Err(TokenError::Invalid("that token is in use".into()));
                }
                if self.by_name.len() >= MAX_TOKENS {
                    return Err(TokenError::Invalid(format!("at most {MAX_TOKENS} tokens")));
                }
                Ok(TokenChange::Set(token.clone()))
            }
            TokenCommand::Revoke { name, .. } => {
                if !self.by_name.contains_key(name) {
                    return Err(TokenError::NotFound(name.chars().take(64).collect()));
                }
                Ok(TokenChange::Revoke { name: name.clone() })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, role: Role, services: &[&str]) -> Token {
        Token {
            name: name.into(),
            sha256: format!("{:0>64}", name.len()),
            role,
            services: services.iter().map(|s| s.to_string()).collect(),
            created_by: "admin".into(),
            created_at_ms: 1,
        }
    }

    #[test]
    fn tokens_are_made_once_found_by_hash_and_revoked() {
        let mut t = Tokens::default();
        let ci = token("ci", Role::Releaser, &["web"]);
        let c = t
            .decide(&TokenCommand::Create {
                token: ci.clone(),
                regions: vec![],
            })
            .unwrap();
        t.change(&c);
        assert_eq!(t.by_sha256(&ci.sha256).map(|x| x.name.as_str()), Some("ci"));
        assert!(ci.may_touch("web") && !ci.may_touch("db"));
        assert!(matches!(
            t.decide(&TokenCommand::Create {
                token: ci.clone(),
                regions: vec![]
            }),
            Err(TokenError::Exists(_))
        ));
        let c = t
            .decide(&TokenCommand::Revoke {
                name: "ci".into(),
                by: "admin".into(),
                now_ms: 2,
                regions: vec![],
            })
            .unwrap();
        t.change(&c);
        assert!(t.by_sha256(&ci.sha256).is_none());
        assert!(t.by_name.is_empty());
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = Tokens::default();
        for bad in [
            token("Bad Name", Role::Reader, &[]),
            token("r", Role::Reader, &["web"]),
            token("x", Role::Releaser, &["../etc"]),
            token("admin", Role::Admin, &[]),
            Token {
                sha256: "short".into(),
                ..token("y", Role::Admin, &[])
            },
        ] {
            assert!(
                matches!(
                    t.decide(&TokenCommand::Create {
                        token: bad.clone(),
                        regions: vec![]
                    }),
                    Err(TokenError::Invalid(_))
                ),
                "{bad:?}"
            );
        }
    }
}

//! Names and ids.
//!
//! Operators name nodes with short strings (`g1`, `east-2`); openraft wants a `u64`. The numeric
//! id is derived from the name by hashing, so there is no second id to configure or to get
//! wrong, and every process computes the same number. Config validation refuses the
//! (astronomically unlikely) collision.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} {value:?} is invalid: expected 1-63 characters of [a-z0-9-], starting with a letter or digit")]
    BadName { what: &'static str, value: String },
    #[error("group {0:?} is invalid: expected \"global\" or \"region/<name>\"")]
    BadGroup(String),
}

/// Checks the shape shared by node, region and service names: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn check_name(what: &'static str, value: &str) -> Result<(), IdError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(IdError::BadName {
            what,
            value: value.chars().take(80).collect(),
        })
    }
}

/// The operator-facing name of a coordinator node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    pub fn new(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        check_name("node id", &name)?;
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The numeric Raft id of this node.
    pub fn raft_id(&self) -> u64 {
        node_id_of(&self.0)
    }
}

impl TryFrom<String> for NodeName {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<NodeName> for String {
    fn from(value: NodeName) -> Self {
        value.0
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for NodeName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

/// The Raft id of a node name: the first 8 bytes of its SHA-256, big-endian.
pub fn node_id_of(name: &str) -> u64 {
    let digest = Sha256::digest(name.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(bytes)
}

/// A Raft group: the global group or one region's group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum GroupName {
    Global,
    Region(String),
}

impl GroupName {
    pub fn region(name: impl Into<String>) -> Result<Self, IdError> {
        let name = name.into();
        check_name("region", &name)?;
        Ok(Self::Region(name))
    }

    /// A string that is safe as a directory name (`global`, `region-us-east`).
    pub fn dir_name(&self) -> String {
        match self {
            GroupName::Global => "global".to_string(),
            GroupName::Region(r) => format!("region-{r}"),
        }
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupName::Global => f.write_str("global"),
            GroupName::Region(r) => write!(f, "region/{r}"),
        }
    }
}

impl FromStr for GroupName {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "global" {
            return Ok(GroupName::Global);
        }
        match s.strip_prefix("region/") {
            Some(r) => {
                GroupName::region(r).map_err(|_| IdError::BadGroup(s.chars().take(80).collect()))
            }
            None => Err(IdError::BadGroup(s.chars().take(80).collect())),
        }
    }
}

impl TryFrom<String> for GroupName {
    type Error = IdError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<GroupName> for String {
    fn from(value: GroupName) -> Self {
        value.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn names_are_checked() {
        assert!(NodeName::new("g1").is_ok());
        assert!(NodeName::new("east-2").is_ok());
        for bad in ["", "-a", "G1", "a_b", "a/b", &"x".repeat(64)] {
            assert!(NodeName::new(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn groups_round_trip() {
        assert_eq!("global".parse::<GroupName>().unwrap(), GroupName::Global);
        let g: GroupName = "region/us-east".parse().unwrap();
        assert_eq!(g, GroupName::Region("us-east".into()));
        assert_eq!(g.to_string(), "region/us-east");
        assert_eq!(g.dir_name(), "region-us-east");
        for bad in [
            "",
            "globals",
            "region/",
            "region/A",
            "region/a/b",
            "us-east",
        ] {
            assert!(
                bad.parse::<GroupName>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn raft_ids_are_stable() {
        // The id is part of every node's on-disk state: it must never change between versions.
        assert_eq!(node_id_of("g1"), node_id_of("g1"));
        assert_ne!(node_id_of("g1"), node_id_of("g2"));
        // First 8 bytes of sha256("g1").
        assert_eq!(node_id_of("g1"), 0x711430f6164e9380_u64);
    }

    proptest! {
        #[test]
        fn group_display_parses_back(r in "[a-z0-9][a-z0-9-]{0,20}") {
            let g = GroupName::region(r).unwrap();
            prop_assert_eq!(g.to_string().parse::<GroupName>().unwrap(), g);
        }
    }
}

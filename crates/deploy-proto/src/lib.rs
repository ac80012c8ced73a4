//! Generated gRPC code for the `deploy.v1` protobuf package under `proto/`.
//!
//! Nothing but generated code and the descriptor set lives here, so every crate that speaks the
//! wire protocol shares one copy. It must not depend on any other crate of this workspace.

#![allow(clippy::all, missing_docs)]

pub mod v1 {
    tonic::include_proto!("deploy.v1");

    /// The encoded `FileDescriptorSet` of the package, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/deploy_v1_descriptor.bin"));
}

impl v1::BuildState {
    /// Whether a build in this state will change no more.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }
}

impl v1::ReleaseState {
    /// Whether a release (or a region's part of it) in this state will change no more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Aborted | Self::RolledBack
        )
    }
}

/// The names of the package's enum values as people and JSON write them: without the enum's
/// prefix (`BUILD_STATE_SUCCEEDED` is `SUCCEEDED`), so the CLI's JSON shows the same upper-case
/// states it always has. Each enum gets `name()` and `from_name()`, and a serde module that
/// `build.rs` puts on every field of that enum.
pub mod names {
    macro_rules! named {
        ($($module:ident: $ty:ident, $prefix:literal, $unspecified:literal;)*) => {$(
            impl crate::v1::$ty {
                /// The value's name without the enum's prefix.
                pub fn name(self) -> &'static str {
                    match self {
                        Self::Unspecified => $unspecified,
                        v => &v.as_str_name()[$prefix.len()..],
                    }
                }

                /// The value a name (without the prefix) stands for.
                pub fn from_name(name: &str) -> Option<Self> {
                    if name == $unspecified {
                        return Some(Self::Unspecified);
                    }
                    match Self::from_str_name(&format!("{}{name}", $prefix)) {
                        Some(Self::Unspecified) => None,
                        v => v,
                    }
                }
            }

            /// Serde for an `i32` field holding this enum: its name; a number the enum does
            /// not know (a newer peer's) as the number.
            pub mod $module {
                use crate::v1::$ty;

                pub fn serialize<S: serde::Serializer>(v: &i32, s: S) -> Result<S::Ok, S::Error> {
                    match $ty::try_from(*v) {
                        Ok(e) => s.serialize_str(e.name()),
                        Err(_) => s.serialize_i32(*v),
                    }
                }

                pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
                    let name: String = serde::Deserialize::deserialize(d)?;
                    $ty::from_name(&name).map(|e| e as i32).ok_or_else(|| {
                        serde::de::Error::custom(format!(
                            "{:?} is not a {}",
                            name.chars().take(40).collect::<String>(),
                            stringify!($ty)
                        ))
                    })
                }

                /// The same, for a field of the enum's own type.
                pub mod typed {
                    use crate::v1::$ty;

                    pub fn serialize<S: serde::Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                        s.serialize_str(v.name())
                    }

                    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                        super::deserialize(d).and_then(|v| {
                            $ty::try_from(v).map_err(|e| serde::de::Error::custom(e.to_string()))
                        })
                    }
                }
            }
        )*};
    }

    named! {
        build_state: BuildState, "BUILD_STATE_", "UNSPECIFIED";
        replication_state: ReplicationState, "REPLICATION_STATE_", "UNSPECIFIED";
        release_state: ReleaseState, "RELEASE_STATE_", "UNSPECIFIED";
        service_state: ServiceState, "SERVICE_STATE_", "";
        role: Role, "ROLE_", "UNSPECIFIED";
    }

    #[cfg(test)]
    mod tests {
        use crate::v1::*;

        #[test]
        fn names_drop_the_prefix_and_parse_back() {
            assert_eq!(BuildState::Succeeded.name(), "SUCCEEDED");
            assert_eq!(ReleaseState::RolledBack.name(), "ROLLED_BACK");
            assert_eq!(ServiceState::Unspecified.name(), "");
            assert_eq!(Role::Leader.name(), "LEADER");
            assert_eq!(
                ReleaseState::from_name("ROLLING_OUT"),
                Some(ReleaseState::RollingOut)
            );
            assert_eq!(BuildState::from_name("BUILD_STATE_QUEUED"), None);
            assert_eq!(BuildState::from_name("queued"), None);
            assert_eq!(ServiceState::from_name("UNSPECIFIED"), None);
        }

        #[test]
        fn json_shows_states_by_name() {
            let b = Build {
                id: "b-1".into(),
                state: BuildState::Succeeded as i32,
                ..Default::default()
            };
            let json = serde_json::to_value(&b).unwrap();
            assert_eq!(json["state"], "SUCCEEDED");
            let back: Build = serde_json::from_value(json).unwrap();
            assert_eq!(back.state(), BuildState::Succeeded);
            let bad = serde_json::json!({"id": "b", "state": "DONE"});
            assert!(serde_json::from_value::<Build>(bad).is_err());
        }

        /// Every enum-typed field of the package is named, not numbered, in JSON: build.rs
        /// lists them by hand, and this finds any it missed.
        #[test]
        fn every_enum_field_has_its_serde_names() {
            use prost::Message;
            let fds =
                prost_types::FileDescriptorSet::decode(crate::v1::FILE_DESCRIPTOR_SET).unwrap();
            let build_rs = include_str!("../build.rs");
            for file in &fds.file {
                for m in &file.message_type {
                    for f in &m.field {
                        if f.r#type() == prost_types::field_descriptor_proto::Type::Enum {
                            let path = format!(".deploy.v1.{}.{}", m.name(), f.name());
                            assert!(
                                build_rs.contains(&format!("\"{path}\"")),
                                "{path} has no serde names in build.rs"
                            );
                        }
                    }
                }
            }
        }
    }
}

//! Retention: which artifacts a store keeps, and what garbage collection may delete.
//!
//! [`plan`] is a pure function of the kept artifacts and the store's contents. It never
//! deletes a chunk that a kept manifest names, nor any object younger than the grace period
//! (a build may be uploading chunks whose manifest does not exist yet).

use std::collections::{BTreeMap, BTreeSet};

use crate::Digest;

/// What the retention policy looks at for each build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildRef {
    pub service: String,
    /// Submission order: higher is newer.
    pub seq: u64,
    pub succeeded: bool,
    /// Still in flight (running or replicating): its artifact is always kept.
    pub in_flight: bool,
    pub artifact_digest: Option<Digest>,
}

/// The artifacts to keep: the newest `keep_per_service` successful builds of each service,
/// every in-flight build's, and every artifact in `referenced` (releases).
pub fn kept_artifacts(
    builds: &[BuildRef],
    keep_per_service: usize,
    referenced: &BTreeSet<Digest>,
) -> BTreeSet<Digest> {
    let mut kept: BTreeSet<Digest> = referenced.clone();
    let mut by_service: BTreeMap<&str, Vec<&BuildRef>> = BTreeMap::new();
    for b in builds {
        if b.in_flight {
            kept.extend(b.artifact_digest);
        }
        if b.succeeded && b.artifact_digest.is_some() {
            by_service.entry(&b.service).or_default().push(b);
        }
    }
    for list in by_service.values_mut() {
        list.sort_by_key(|b| std::cmp::Reverse(b.seq));
        kept.extend(
            list.iter()
                .take(keep_per_service)
                .filter_map(|b| b.artifact_digest),
        );
    }
    kept
}

/// An object of a store: its digest and whether it is younger than the grace period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub digest: Digest,
    pub size: u64,
    pub recent: bool,
}

/// What a store holds.
#[derive(Debug, Clone, Default)]
pub struct StoreContents {
    pub manifests: Vec<StoredObject>,
    /// The chunk digests each readable manifest names.
    pub manifest_chunks: BTreeMap<Digest, Vec<Digest>>,
    pub chunks: Vec<StoredObject>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    pub delete_manifests: Vec<Digest>,
    pub delete_chunks: Vec<Digest>,
    pub bytes_freed: u64,
    pub kept_manifests: usize,
    pub kept_chunks: usize,
}

/// Plans a collection of one store.
pub fn plan(kept: &BTreeSet<Digest>, store: &StoreContents) -> GcPlan {
    // Chunks named by any manifest that stays: kept ones, recent ones, and unreadable ones
    // (never judge what cannot be read).
    let staying: BTreeSet<&Digest> = store
        .manifests
        .iter()
        .filter(|m| {
            kept.contains(&m.digest) || m.recent || !store.manifest_chunks.contains_key(&m.digest)
        })
        .map(|m| &m.digest)
        .collect();
    let protected: BTreeSet<&Digest> = staying
        .iter()
        .filter_map(|d| store.manifest_chunks.get(*d))
        .flatten()
        .collect();
    let mut p = GcPlan::default();
    for m in &store.manifests {
        if staying.contains(&m.digest) {
            p.kept_manifests += 1;
        } else {
            p.delete_manifests.push(m.digest);
            p.bytes_freed += m.size;
        }
    }
    for c in &store.chunks {
        if protected.contains(&c.digest) || c.recent {
            p.kept_chunks += 1;
        } else {
            p.delete_chunks.push(c.digest);
            p.bytes_freed += c.size;
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// A test's short name for an object, as a digest.
    fn d(name: &str) -> Digest {
        Digest::of(name.as_bytes())
    }

    fn obj(name: &str, recent: bool) -> StoredObject {
        StoredObject {
            digest: d(name),
            size: 10,
            recent,
        }
    }

    #[test]
    fn keeps_the_newest_successes_per_service_and_in_flight_builds() {
        let b = |service: &str, seq, succeeded, in_flight, name: &str| BuildRef {
            service: service.into(),
            seq,
            succeeded,
            in_flight,
            artifact_digest: Some(d(name)),
        };
        let builds = [
            b("a", 1, true, false, "a1"),
            b("a", 2, true, false, "a2"),
            b("a", 3, true, false, "a3"),
            b("a", 4, false, true, "a4"),
            b("b", 5, true, false, "b5"),
            b("b", 6, false, false, "b6"),
        ];
        let kept = kept_artifacts(&builds, 2, &BTreeSet::from([d("old")]));
        let want: BTreeSet<Digest> = ["a2", "a3", "a4", "b5", "old"].map(d).into();
        assert_eq!(kept, want);
    }

    #[test]
    fn never_deletes_chunks_of_kept_or_recent_manifests() {
        let store = StoreContents {
            manifests: vec![obj("m1", false), obj("m2", false), obj("m3", true)],
            manifest_chunks: BTreeMap::from([
                (d("m1"), vec![d("c1"), d("shared")]),
                (d("m2"), vec![d("c2"), d("shared")]),
                (d("m3"), vec![d("c3")]),
            ]),
            chunks: vec![
                obj("c1", false),
                obj("c2", false),
                obj("c3", false),
                obj("shared", false),
                obj("stray", false),
                obj("new", true),
            ],
        };
        let p = plan(&BTreeSet::from([d("m1")]), &store);
        assert_eq!(p.delete_manifests, [d("m2")]);
        assert_eq!(p.delete_chunks, [d("c2"), d("stray")]);
        assert_eq!(p.bytes_freed, 30);
    }

    proptest! {
        /// Over random build histories (services, outcomes, artifacts sharing chunks): the
        /// kept set is exactly the newest `keep` successes per service plus in-flight builds,
        /// and collecting the store those builds produced never removes a chunk of a kept one.
        #[test]
        fn random_histories_keep_what_the_policy_says(
            history in proptest::collection::vec((0u8..3, 0u8..4, proptest::collection::vec(0u8..10, 1..4)), 0..30),
            keep in 1usize..4,
        ) {
            // (service, outcome: 0 succeeded, 1 failed, 2 in flight, 3 cancelled, chunks)
            let builds: Vec<BuildRef> = history
                .iter()
                .enumerate()
                .map(|(i, (svc, outcome, _))| BuildRef {
                    service: format!("s{svc}"),
                    seq: i as u64 + 1,
                    succeeded: *outcome == 0,
                    in_flight: *outcome == 2,
                    artifact_digest: (*outcome != 3).then(|| d(&format!("a{i}"))),
                })
                .collect();
            let kept = kept_artifacts(&builds, keep, &BTreeSet::new());
            for svc in 0..3u8 {
                let service = format!("s{svc}");
                let mut wins: Vec<&BuildRef> = builds.iter().filter(|b| b.service == service && b.succeeded).collect();
                wins.sort_by_key(|b| std::cmp::Reverse(b.seq));
                for (rank, b) in wins.iter().enumerate() {
                    let digest = b.artifact_digest.unwrap_or(d("none"));
                    prop_assert_eq!(kept.contains(&digest), rank < keep, "{} rank {}", digest, rank);
                }
            }
            for b in builds.iter().filter(|b| b.in_flight) {
                prop_assert!(kept.contains(b.artifact_digest.as_ref().unwrap()));
            }
            // The store those builds left (failed builds' artifacts too), nothing recent.
            let store = StoreContents {
                manifests: builds.iter().filter_map(|b| b.artifact_digest).map(|digest| StoredObject { digest, size: 10, recent: false }).collect(),
                manifest_chunks: history
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, o, _))| *o != 3)
                    .map(|(i, (_, _, cs))| (d(&format!("a{i}")), cs.iter().map(|c| d(&format!("c{c}"))).collect()))
                    .collect(),
                chunks: (0..10).map(|c| obj(&format!("c{c}"), false)).collect(),
            };
            let p = plan(&kept, &store);
            for d in &kept {
                prop_assert!(!p.delete_manifests.contains(d));
                for c in store.manifest_chunks.get(d).into_iter().flatten() {
                    prop_assert!(!p.delete_chunks.contains(c), "chunk {} of kept {} deleted", c, d);
                }
            }
            for m in &store.manifests {
                prop_assert_eq!(p.delete_manifests.contains(&m.digest), !kept.contains(&m.digest));
            }
        }

        /// Over random stores and kept sets: no chunk named by a kept manifest is deleted, no
        /// kept or recent object is deleted, and everything else is.
        #[test]
        fn gc_never_deletes_what_a_kept_manifest_needs(
            manifests in proptest::collection::btree_map(0u8..12, (proptest::collection::vec(0u8..20, 0..5), any::<bool>()), 0..12),
            chunks in proptest::collection::btree_map(0u8..20, any::<bool>(), 0..20),
            kept in proptest::collection::btree_set(0u8..12, 0..6),
        ) {
            let store = StoreContents {
                manifests: manifests.iter().map(|(m, (_, recent))| obj(&format!("m{m}"), *recent)).collect(),
                manifest_chunks: manifests.iter().map(|(m, (cs, _))| (d(&format!("m{m}")), cs.iter().map(|c| d(&format!("c{c}"))).collect())).collect(),
                chunks: chunks.iter().map(|(c, recent)| obj(&format!("c{c}"), *recent)).collect(),
            };
            let kept: BTreeSet<Digest> = kept.iter().map(|m| d(&format!("m{m}"))).collect();
            let p = plan(&kept, &store);
            let deleted: BTreeSet<&Digest> = p.delete_chunks.iter().collect();
            for m in &store.manifests {
                if kept.contains(&m.digest) || m.recent {
                    prop_assert!(!p.delete_manifests.contains(&m.digest));
                    for c in &store.manifest_chunks[&m.digest] {
                        prop_assert!(!deleted.contains(c), "chunk {} of kept manifest {} deleted", c, m.digest);
                    }
                }
            }
            for c in &store.chunks {
                if c.recent {
                    prop_assert!(!deleted.contains(&c.digest));
                }
            }
            prop_assert_eq!(p.kept_manifests + p.delete_manifests.len(), store.manifests.len());
            prop_assert_eq!(p.kept_chunks + p.delete_chunks.len(), store.chunks.len());
        }
    }
}

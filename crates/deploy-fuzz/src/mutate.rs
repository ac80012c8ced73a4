//! Inputs for a target: its seeds mutated the way fuzzers mutate (bits flipped, bytes set,
//! tokens inserted, ranges deleted or duplicated, other seeds spliced in), or random bytes.

use proptest::prelude::*;

/// Pieces of the formats the targets read (TOML, JSON, tar paths), worth inserting whole.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"'",
    b"[",
    b"]",
    b"{",
    b"}",
    b"=",
    b",",
    b":",
    b"\n",
    b"\0",
    b"..",
    b"../",
    b"/",
    b"\\",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"4294967295",
    b"1e309",
    b"null",
    b"true",
    b"[[",
    b"]]",
    b"\"\"\"",
    b"\\u0000",
    b"\xff\xfe",
    b"sha256:",
    b"inf",
    b"nan",
];

/// One change to an input; positions wrap around its length.
#[derive(Debug, Clone)]
pub enum Mutation {
    Flip {
        at: usize,
        bit: u8,
    },
    Set {
        at: usize,
        byte: u8,
    },
    Insert {
        at: usize,
        bytes: Vec<u8>,
    },
    Token {
        at: usize,
        which: usize,
    },
    Delete {
        at: usize,
        len: usize,
    },
    Duplicate {
        at: usize,
        len: usize,
    },
    Splice {
        at: usize,
        seed: usize,
        from: usize,
        len: usize,
    },
    Truncate {
        at: usize,
    },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let at = any::<usize>();
    prop_oneof![
        (at, 0u8..8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        (at, any::<u8>()).prop_map(|(at, byte)| Mutation::Set { at, byte }),
        (at, prop::collection::vec(any::<u8>(), 1..16))
            .prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        (at, 0..TOKENS.len()).prop_map(|(at, which)| Mutation::Token { at, which }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Delete { at, len }),
        (at, 1usize..64).prop_map(|(at, len)| Mutation::Duplicate { at, len }),
        (at, any::<usize>(), any::<usize>(), 1usize..256).prop_map(|(at, seed, from, len)| {
            Mutation::Splice {
                at,
                seed,
                from,
                len,
            }
        }),
        at.prop_map(|at| Mutation::Truncate { at }),
    ]
}

/// `input` with `m` applied; `seeds` feed splices.
pub fn apply(mut input: Vec<u8>, m: &Mutation, seeds: &[Vec<u8>]) -> Vec<u8> {
    let pos = |at: usize, len: usize| if len == 0 { 0 } else { at % (len + 1) };
    match m {
        Mutation::Flip { at, bit } => {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] ^= 1 << bit;
            }
        }
        Mutation::Set { at, byte } => {
            if !input.is_empty() {
                let i = at % input.len();
                input[i] = *byte;
            }
        }
        Mutation::Insert { at, bytes } => {
            let i = pos(*at, input.len());
            input.splice(i..i, bytes.iter().copied());
        }
        Mutation::Token { at, which } => {
            let i = pos(*at, input.len());
            input.splice(i..i, TOKENS[*which].iter().copied());
        }
        Mutation::Delete { at, len } => {
            let i = pos(*at, input.len());
            let end = (i + len).min(input.len());
            input.drain(i..end);
        }
        Mutation::Duplicate { at, len } => {
            let i = pos(*at, input.len());
            let end = (i + len).min(input.len());
            let piece: Vec<u8> = input[i..end].to_vec();
            input.splice(end..end, piece);
        }
        Mutation::Splice {
            at,
            seed,
            from,
            len,
        } => {
            if let Some(other) = seeds.get(seed % seeds.len().max(1)) {
                let f = pos(*from, other.len());
                let end = (f + len).min(other.len());
                let i = pos(*at, input.len());
                input.splice(i..i, other[f..end].iter().copied());
            }
        }
        Mutation::Truncate { at } => {
            let i = pos(*at, input.len());
            input.truncate(i);
        }
    }
    input
}

/// Inputs for a target with `seeds`: mostly mutated seeds, some random bytes.
pub fn inputs(seeds: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    let random = prop::collection::vec(any::<u8>(), 0..1024);
    if seeds.is_empty() {
        return random.boxed();
    }
    let n = seeds.len();
    let mutated = (0..n, prop::collection::vec(mutation(), 0..8)).prop_map(move |(i, ms)| {
        ms.iter()
            .fold(seeds[i].clone(), |acc, m| apply(acc, m, &seeds))
    });
    prop_oneof![1 => random, 9 => mutated].boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_on_any_input() {
        let seeds = vec![b"abc".to_vec(), Vec::new()];
        for input in [Vec::new(), b"x".to_vec(), b"hello world".to_vec()] {
            for m in [
                Mutation::Flip {
                    at: usize::MAX,
                    bit: 7,
                },
                Mutation::Set { at: 5, byte: 0 },
                Mutation::Insert {
                    at: usize::MAX,
                    bytes: vec![1, 2],
                },
                Mutation::Token { at: 3, which: 0 },
                Mutation::Delete {
                    at: usize::MAX,
                    len: 63,
                },
                Mutation::Duplicate { at: 1, len: 63 },
                Mutation::Splice {
                    at: 2,
                    seed: 1,
                    from: usize::MAX,
                    len: 255,
                },
                Mutation::Truncate { at: 0 },
            ] {
                let _ = apply(input.clone(), &m, &seeds);
            }
        }
        assert_eq!(
            apply(b"ab".to_vec(), &Mutation::Truncate { at: 1 }, &seeds),
            b"a"
        );
        assert_eq!(
            apply(b"ab".to_vec(), &Mutation::Token { at: 1, which: 0 }, &seeds),
            b"a\"b"
        );
    }
}

//! `deploy.toml`: how a repository builds and runs.
//!
//! ```toml
//! [build]
//! command = "sh build.sh"          # run by `sh -c` in the checkout
//! outputs = ["bin/hello"]          # files or directories, relative to the repository root
//! timeout_secs = 600               # optional
//! env = { GREETING = "hi" }        # optional, added to a clean environment
//!
//! [run]
//! command = "./bin/hello"          # how hosts start the service
//! health_command = "test -f ok"    # optional
//! health_url = "http://127.0.0.1:8080/healthz"  # optional
//! ```

use std::collections::BTreeMap;
use std::path::{Component, Path};

use serde::{Deserialize, Serialize};

pub const RECIPE_FILE: &str = "deploy.toml";
pub const MAX_RECIPE_BYTES: usize = 64 * 1024;
pub const MAX_OUTPUTS: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum RecipeError {
    #[error("{RECIPE_FILE} is missing at the repository root")]
    Missing,
    #[error("{RECIPE_FILE} is {0} bytes, over the {MAX_RECIPE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("{RECIPE_FILE} is invalid: {0}")]
    Invalid(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildSection {
    pub command: String,
    pub outputs: Vec<String>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub command: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub build: BuildSection,
    pub run: RunSection,
}

/// A relative path that stays inside the directory it is relative to.
pub fn is_contained(path: &str) -> bool {
    let p = Path::new(path);
    !path.is_empty()
        && !p.is_absolute()
        && p.components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
}

impl Recipe {
    /// Reads `deploy.toml` from a checkout.
    pub fn load(root: &Path) -> Result<Self, RecipeError> {
        let path = root.join(RECIPE_FILE);
        let meta = std::fs::symlink_metadata(&path).map_err(|_| RecipeError::Missing)?;
        if !meta.is_file() {
            return Err(RecipeError::Invalid("it is not a regular file".into()));
        }
        if meta.len() as usize > MAX_RECIPE_BYTES {
            return Err(RecipeError::TooLarge(meta.len() as usize));
        }
        let text =
            std::fs::read_to_string(&path).map_err(|e| RecipeError::Invalid(e.to_string()))?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, RecipeError> {
        if text.len() > MAX_RECIPE_BYTES {
            return Err(RecipeError::TooLarge(text.len()));
        }
        let r: Recipe = toml::from_str(text)
            .map_err(|e| RecipeError::Invalid(e.to_string().trim_end().to_string()))?;
        let bad = |m: String| Err(RecipeError::Invalid(m));
        if r.build.command.trim().is_empty() {
            return bad("build.command is empty".into());
        }
        if r.run.command.trim().is_empty() {
            return bad("run.command is empty".into());
        }
        if r.build.outputs.is_empty() || r.build.outputs.len() > MAX_OUTPUTS {
            return bad(format!("build.outputs must list 1 to {MAX_OUTPUTS} paths"));
        }
        for o in &r.build.outputs {
            if !is_contained(o) || o.starts_with(".deploy") {
                return bad(format!("build.outputs entry {o:?} must be a relative path inside the repository (not .deploy)"));
            }
        }
        if r.build.timeout_secs == Some(0) {
            return bad("build.timeout_secs must be above 0".into());
        }
        for k in r.build.env.keys() {
            let ok = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                && !k.as_bytes()[0].is_ascii_digit();
            if !ok {
                return bad(format!("build.env key {k:?} must be [A-Z_][A-Z0-9_]*"));
            }
        }
        Ok(r)
    }

    /// The `[run]` section as it is stored inside the artifact (`.deploy/run.toml`).
    pub fn run_toml(&self) -> String {
        toml::to_string(&RunFile {
            run: self.run.clone(),
        })
        .unwrap_or_default()
    }
}

/// Reads the `[run]` section an artifact carries in `.deploy/run.toml`.
pub fn parse_run_toml(text: &str) -> Result<RunSection, RecipeError> {
    if text.len() > MAX_RECIPE_BYTES {
        return Err(RecipeError::TooLarge(text.len()));
    }
    #[derive(Deserialize)]
    struct Read {
        run: RunSection,
    }
    let r: Read = toml::from_str(text)
        .map_err(|e| RecipeError::Invalid(e.to_string().trim_end().to_string()))?;
    if r.run.command.trim().is_empty() {
        return Err(RecipeError::Invalid("run.command is empty".into()));
    }
    Ok(r.run)
}

#[derive(Serialize)]
struct RunFile {
    run: RunSection,
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "[build]\ncommand = \"sh build.sh\"\noutputs = [\"out/app\"]\nenv = { GREETING = \"hi\" }\n[run]\ncommand = \"./out/app\"\n";

    #[test]
    fn parses_and_keeps_the_run_section() {
        let r = Recipe::parse(GOOD).unwrap();
        assert_eq!(r.build.outputs, ["out/app"]);
        assert!(r.run_toml().contains("command = \"./out/app\""));
    }

    #[test]
    fn refuses_bad_recipes_with_the_reason() {
        for (text, why) in [
            (
                GOOD.replace("outputs = [\"out/app\"]", "outputs = [\"../etc\"]"),
                "outputs",
            ),
            (
                GOOD.replace("outputs = [\"out/app\"]", "outputs = [\"/etc\"]"),
                "outputs",
            ),
            (
                GOOD.replace("outputs = [\"out/app\"]", "outputs = []"),
                "outputs",
            ),
            (GOOD.replace("GREETING", "bad-key"), "env"),
            (GOOD.replace("[run]", "[runn]"), "runn"),
            (
                GOOD.replace("command = \"sh build.sh\"", "command = \"\""),
                "build.command",
            ),
            ("not toml at all [".to_string(), "invalid"),
        ] {
            let e = Recipe::parse(&text).unwrap_err().to_string();
            assert!(e.contains(why), "{why}: {e}");
        }
    }
}

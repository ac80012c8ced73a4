//! Where builds may fetch from: a repository location parsed once ([`RepoUrl`]), and the
//! cluster's policy of allowed locations ([`RepoPolicy`], `builds.allowed_repos`).
//!
//! A location is a local absolute path, a `file://` URL of one, or an `https://` or `ssh://`
//! URL. Nothing in it may look like an option to git (a user, host or path segment beginning
//! with `-`), climb (`.` or `..` segments), or hide a character behind an escape (`%`).
//!
//! A pattern has the same shape, with globs: `*` matches within one segment of the path (or
//! within the host), and a whole segment `**` matches any number of segments. A local
//! pattern (`/srv/git/**`) matches both a path and its `file://` URL.
//!
//! ```toml
//! [builds]
//! allowed_repos = ["https://git.example.com/acme/**", "ssh://git@git.example.com/*/*.git", "/srv/git/**"]
//! ```
//!
//! An empty policy (the default) allows nothing: a production cluster names its sources.

use std::fmt;

use serde::Deserialize;

/// Largest repository URL or path accepted.
pub const MAX_REPO_LEN: usize = 1024;
/// Patterns in `builds.allowed_repos`, at most.
pub const MAX_REPO_PATTERNS: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// A local path, or a `file://` URL of one.
    Local,
    Https,
    Ssh,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Local => "a local path",
            Scheme::Https => "https",
            Scheme::Ssh => "ssh",
        }
    }
}

/// A repository location, or a pattern of them, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoUrl {
    pub scheme: Scheme,
    /// `user@host:port` as written (lowercased), empty for a local path.
    pub authority: String,
    /// The path's segments, empty ones dropped.
    pub segments: Vec<String>,
}

/// Characters an authority may hold: a host name or address, a user, a port.
fn authority_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '~' | '@' | ':' | '[' | ']')
}

impl RepoUrl {
    /// Parses `text`; `glob` allows `*` (in patterns). The error says what is wrong.
    fn parse_as(text: &str, glob: bool) -> Result<Self, &'static str> {
        if text.is_empty() || text.len() > MAX_REPO_LEN {
            return Err("expected 1-1024 characters");
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return Err("it holds white space or a control character");
        }
        if text.contains('%') {
            return Err("escapes (%) are not accepted");
        }
        if !glob && text.contains('*') {
            return Err("it holds a *");
        }
        if text.starts_with('-') {
            return Err("it begins with '-', which git would take for an option");
        }
        let (scheme, rest) = if let Some(r) = text.strip_prefix("file://") {
            if !r.starts_with('/') {
                return Err("a file:// URL needs an absolute path");
            }
            (Scheme::Local, r)
        } else if let Some(r) = text.strip_prefix("https://") {
            (Scheme::Https, r)
        } else if let Some(r) = text.strip_prefix("ssh://") {
            (Scheme::Ssh, r)
        } else if text.starts_with('/') {
            (Scheme::Local, text)
        } else {
            return Err("expected a local absolute path, or a file://, https:// or ssh:// URL");
        };
        let (authority, path) = match scheme {
            Scheme::Local => ("", rest),
            _ => rest.split_at(rest.find('/').unwrap_or(rest.len())),
        };
        if scheme != Scheme::Local {
            check_authority(authority, glob)?;
        }
        let mut segments = Vec::new();
        for s in path.split('/').filter(|s| !s.is_empty()) {
            if s == "." || s == ".." {
                return Err("it has a . or .. segment");
            }
            if s.starts_with('-') {
                return Err("a path segment begins with '-', which git would take for an option");
            }
            segments.push(s.to_string());
        }
        if segments.is_empty() {
            return Err("it names no path");
        }
        Ok(Self {
            scheme,
            authority: authority.to_ascii_lowercase(),
            segments,
        })
    }

    /// Parses a repository location as a build names it.
    pub fn parse(text: &str) -> Result<Self, &'static str> {
        Self::parse_as(text, false)
    }
}

fn check_authority(authority: &str, glob: bool) -> Result<(), &'static str> {
    if authority.is_empty() {
        return Err("it names no host");
    }
    if !authority
        .chars()
        .all(|c| authority_char(c) || (glob && c == '*'))
    {
        return Err("its host holds a character that is not accepted");
    }
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    if user.is_some_and(|u| u.is_empty() || u.starts_with('-') || u.contains('@')) {
        return Err("its user is empty, repeated or begins with '-'");
    }
    if host.is_empty() || host.starts_with('-') || host.starts_with(':') {
        return Err("its host is empty or begins with '-'");
    }
    Ok(())
}

/// Whether `text` matches `pattern`, where `*` matches any run of characters.
fn glob(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    // The classic two-pointer match with one backtrack point: linear in practice.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < t.len() {
        if i < p.len() && p[i] != '*' && p[i] == t[j] {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|c| *c == '*')
}

/// Whether `segments` match the pattern's, where a `**` segment matches any number: a table
/// of which pattern suffixes match which segment suffixes, so it costs their product at most.
fn segments_match(pattern: &[String], segments: &[String]) -> bool {
    let (np, ns) = (pattern.len(), segments.len());
    // m[i][j]: pattern[i..] matches segments[j..].
    let mut m = vec![vec![false; ns + 1]; np + 1];
    m[np][ns] = true;
    for i in (0..np).rev() {
        for j in (0..=ns).rev() {
            m[i][j] = if pattern[i] == "**" {
                m[i + 1][j] || (j < ns && m[i][j + 1])
            } else {
                j < ns && glob(&pattern[i], &segments[j]) && m[i + 1][j + 1]
            };
        }
    }
    m[0][0]
}

/// One allowed location pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepoPattern {
    text: String,
    url: RepoUrl,
}

impl RepoPattern {
    pub fn parse(text: &str) -> Result<Self, String> {
        let url = RepoUrl::parse_as(text, true)
            .map_err(|why| format!("repository pattern {text:?} is invalid: {why}"))?;
        Ok(Self {
            text: text.to_string(),
            url,
        })
    }

    pub fn matches(&self, repo: &RepoUrl) -> bool {
        self.url.scheme == repo.scheme
            && glob(&self.url.authority, &repo.authority)
            && segments_match(&self.url.segments, &repo.segments)
    }
}

impl fmt::Display for RepoPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// `builds.allowed_repos`: the locations builds may fetch from. Empty allows nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RepoPolicy {
    patterns: Vec<RepoPattern>,
}

impl RepoPolicy {
    pub fn new(patterns: &[&str]) -> Result<Self, String> {
        if patterns.len() > MAX_REPO_PATTERNS {
            return Err(format!(
                "builds.allowed_repos: at most {MAX_REPO_PATTERNS} patterns"
            ));
        }
        Ok(Self {
            patterns: patterns
                .iter()
                .map(|p| RepoPattern::parse(p))
                .collect::<Result<_, _>>()?,
        })
    }

    /// Every local path (what `deployd dev` allows).
    pub fn local_paths() -> Self {
        Self::new(&["/**"]).unwrap_or_default()
    }

    pub fn patterns(&self) -> &[RepoPattern] {
        &self.patterns
    }

    /// Whether a build may fetch `repo`; the error says why not, naming the field.
    pub fn check(&self, repo: &str) -> Result<RepoUrl, String> {
        let shown: String = repo.chars().take(100).collect();
        let url =
            RepoUrl::parse(repo).map_err(|why| format!("repo {shown:?} is invalid: {why}"))?;
        if self.patterns.is_empty() {
            return Err(format!(
                "repo {shown:?} is not allowed: this cluster allows no repository (its config's builds.allowed_repos is empty)"
            ));
        }
        if !self.patterns.iter().any(|p| p.matches(&url)) {
            let listed: Vec<String> = self
                .patterns
                .iter()
                .take(8)
                .map(|p| p.to_string())
                .collect();
            let more = self.patterns.len().saturating_sub(8);
            return Err(format!(
                "repo {shown:?} ({}) is not allowed by builds.allowed_repos: {}{}",
                url.scheme.as_str(),
                listed.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ));
        }
        Ok(url)
    }
}

impl<'de> Deserialize<'de> for RepoPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw: Vec<String> = Vec::deserialize(d)?;
        let refs: Vec<&str> = raw.iter().map(String::as_str).collect();
        Self::new(&refs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(p: &[&str]) -> RepoPolicy {
        RepoPolicy::new(p).unwrap()
    }

    #[test]
    fn locations_parse_into_their_parts() {
        let u = RepoUrl::parse("ssh://git@Git.Example.com:22/acme//web.git").unwrap();
        assert_eq!(u.scheme, Scheme::Ssh);
        assert_eq!(u.authority, "git@git.example.com:22");
        assert_eq!(u.segments, ["acme", "web.git"]);
        let f = RepoUrl::parse("file:///srv/git/app").unwrap();
        assert_eq!(f, RepoUrl::parse("/srv/git/app").unwrap());
    }

    #[test]
    fn options_climbs_and_escapes_are_refused_whatever_the_policy() {
        for bad in [
            "ssh://-oProxyCommand=touch${IFS}x/y",
            "ssh://git@-oProxyCommand=x/y",
            "ssh://-user@host/y",
            "https://host/-upload-pack=x",
            "/srv/git/--upload-pack=x",
            "-uoops",
            "/srv/git/../../etc",
            "/srv/./git",
            "https://%2doProxy/x",
            "https://host",
            "https://",
            "ssh://host:/x y",
            "https://ho$t/x",
            "ext::sh -c x",
            "file://relative",
            "ftp://x/y",
            "/",
            "/srv/*",
        ] {
            let e = policy(&["/**", "https://**/**", "ssh://**/**"]).check(bad);
            assert!(e.is_err(), "{bad:?} was accepted");
            assert!(e.unwrap_err().starts_with("repo "), "{bad:?}");
        }
    }

    #[test]
    fn the_policy_allows_only_what_it_lists() {
        let p = policy(&[
            "https://git.example.com/acme/**",
            "ssh://git@git.example.com/*/*.git",
            "/srv/git/**",
        ]);
        for good in [
            "https://git.example.com/acme/web.git",
            "https://GIT.example.com/acme/team/web",
            "ssh://git@git.example.com/acme/web.git",
            "/srv/git/app",
            "file:///srv/git/team/app",
        ] {
            assert!(p.check(good).is_ok(), "{good}: {:?}", p.check(good));
        }
        for bad in [
            "file:///etc",
            "/etc",
            "/srv/gitx/app",
            "https://git.example.com/other/web.git",
            "https://evil.example.com/acme/web.git",
            "ssh://root@git.example.com/acme/web.git",
            "ssh://git@git.example.com/acme/deep/web.git",
            "https://git.example.com.evil/acme/x",
        ] {
            let e = p.check(bad).unwrap_err();
            assert!(
                e.contains("not allowed by builds.allowed_repos"),
                "{bad}: {e}"
            );
        }
        let e = RepoPolicy::default().check("/srv/git/app").unwrap_err();
        assert!(e.contains("allows no repository"), "{e}");
        assert!(RepoPolicy::local_paths().check("/tmp/x/y").is_ok());
        assert!(RepoPolicy::local_paths().check("https://h/x").is_err());
    }

    #[test]
    fn bad_patterns_are_named() {
        let e = RepoPolicy::new(&["ftp://x/y"]).unwrap_err();
        assert!(e.contains("ftp://x/y"), "{e}");
        assert!(RepoPolicy::new(&["/srv/../x"]).is_err());
        let deep = policy(&["/**/a/**/b/**/c/**"]);
        assert!(deep.check("/x/a/y/b/z/c").is_ok());
        assert!(deep.check(&format!("/{}", "q/".repeat(500))).is_err());
    }

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("a*c", "abbbc"));
        assert!(glob("*.git", "web.git"));
        assert!(!glob("*.git", "web.gitx"));
        assert!(glob("git@*.example.com", "git@a.example.com"));
        assert!(!glob("a", "ab"));
    }
}

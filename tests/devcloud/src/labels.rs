//! Drogue's label selector (`DC service-api/src/labels/parser.rs`): comma-separated terms,
//! all of which must hold: `k`, `!k`, `k=v` (also `k==v`), `k!=v`, `k in (a,b)`,
//! `k notin (a,b)`. Keys are `[prefix/]name`. As in Kubernetes, `k!=v` and `k notin (..)` also
//! match objects that do not have the label at all.

use std::collections::BTreeMap;

use crate::DevCloudError;

/// One term of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Term {
    Exists(String),
    NotExists(String),
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    terms: Vec<Term>,
}

impl Selector {
    /// Parses a selector as it appears in the `labels` query parameter.
    pub fn parse(text: &str) -> Result<Self, DevCloudError> {
        let bad = |reason: &str| DevCloudError::BadSelector {
            selector: text.to_owned(),
            reason: reason.to_owned(),
        };
        let mut terms = Vec::new();
        for raw in split_top_level(text).map_err(&bad)? {
            let term = raw.trim();
            if term.is_empty() {
                if text.trim().is_empty() {
                    continue;
                }
                return Err(bad("empty term"));
            }
            terms.push(parse_term(term).map_err(|r| bad(&r))?);
        }
        Ok(Self { terms })
    }

    /// Whether an object with these labels is selected.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Exists(k) => labels.contains_key(k),
            Term::NotExists(k) => !labels.contains_key(k),
            Term::Eq(k, v) => labels.get(k) == Some(v),
            Term::NotEq(k, v) => labels.get(k) != Some(v),
            Term::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Term::NotIn(k, vs) => !labels.get(k).is_some_and(|l| vs.contains(l)),
        })
    }
}

/// Splits at commas that are not inside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, &'static str> {
    let mut parts = Vec::new();
    let mut depth = 0u32;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' if depth > 0 => return Err("nested parentheses"),
            '(' => depth += 1,
            ')' if depth == 0 => return Err("unbalanced ')'"),
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed '('");
    }
    parts.push(&text[start..]);
    Ok(parts)
}

fn parse_term(term: &str) -> Result<Term, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Term::NotExists(key_of(key.trim())?));
    }
    if let Some((k, v)) = term.split_once("!=") {
        return Ok(Term::NotEq(key_of(k.trim())?, value_of(v.trim())?));
    }
    if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
        return Ok(Term::Eq(key_of(k.trim())?, value_of(v.trim())?));
    }
    if let Some(open) = term.find('(') {
        let head = term[..open].trim();
        let list = term[open + 1..]
            .strip_suffix(')')
            .ok_or_else(|| format!("text after ')' in {term:?}"))?;
        let values = list.split(',').map(|v| value_of(v.trim())).collect::<Result<Vec<_>, _>>()?;
        let (key, op) = head
            .rsplit_once(char::is_whitespace)
            .ok_or_else(|| format!("expected 'key in (..)' or 'key notin (..)' in {term:?}"))?;
        let key = key_of(key.trim())?;
        return match op {
            "in" => Ok(Term::In(key, values)),
            "notin" => Ok(Term::NotIn(key, values)),
            other => Err(format!("unknown operator {other:?}")),
        };
    }
    Ok(Term::Exists(key_of(term)?))
}

fn key_of(key: &str) -> Result<String, String> {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let prefix_ok = prefix.chars().all(|c| c.is_ascii_alphanumeric() || "-.".contains(c));
    if name.is_empty() || !prefix_ok || key.starts_with('/') || !name.chars().all(label_char) {
        return Err(format!("invalid label key {key:?}"));
    }
    Ok(key.to_owned())
}

fn value_of(value: &str) -> Result<String, String> {
    if !value.chars().all(label_char) {
        return Err(format!("invalid label value {value:?}"));
    }
    Ok(value.to_owned())
}

fn label_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-_.".contains(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn sel(s: &str) -> Selector {
        Selector::parse(s).unwrap()
    }

    #[test]
    fn each_form_matches_as_kubernetes_does() {
        let a = labels(&[("zone", "north"), ("tier", "gw")]);
        let none = labels(&[]);
        assert!(sel("zone").matches(&a) && !sel("zone").matches(&none));
        assert!(!sel("!zone").matches(&a) && sel("!zone").matches(&none));
        assert!(sel("zone=north").matches(&a) && !sel("zone=south").matches(&a));
        assert!(sel("zone==north").matches(&a));
        assert!(sel("zone!=south").matches(&a) && !sel("zone!=north").matches(&a));
        assert!(sel("zone!=north").matches(&none), "!= matches a missing label");
        assert!(sel("zone in (south, north)").matches(&a));
        assert!(!sel("zone in (south)").matches(&a) && !sel("zone in (north)").matches(&none));
        assert!(sel("zone notin (south)").matches(&a) && !sel("zone notin (north,x)").matches(&a));
        assert!(sel("zone notin (north)").matches(&none));
    }

    #[test]
    fn commas_combine_with_and_outside_parentheses() {
        let a = labels(&[("zone", "north"), ("tier", "gw")]);
        assert!(sel("zone in (a,north),tier=gw").matches(&a));
        assert!(!sel("zone in (a,north),tier=x").matches(&a));
        assert!(sel("").matches(&a));
        assert!(sel("example.com/owner!=x").matches(&a));
    }

    #[test]
    fn rejects_malformed_selectors() {
        for bad in ["zone in (a", "zone)", "zone,,tier", "zone=a b", "zone between (a)", "=v", "!"]
        {
            assert!(Selector::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}

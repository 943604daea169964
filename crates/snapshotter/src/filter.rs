//! containerd's filter syntax for `List`, as its metadata layer applies it
//! to snapshots:
//!
//! ```text
//! filters   := filter            (several filters are ORed)
//! filter    := clause (',' clause)*     (clauses are ANDed)
//! clause    := fieldpath [ ('==' | '!=' | '~=') value ]
//! fieldpath := field ('.' field)*      field: [A-Za-z0-9_]+ or "quoted"
//! value     := "quoted" | /regexp/ | bare text up to ','
//! ```
//!
//! Fields: `name`, `parent`, `kind` (`active`/`view`/`committed`) and
//! `labels.<key>` (the rest of the path, joined with '.', is the label key).
//! A clause without an operator matches when the field is present.
//! An absent field never matches, not even `!=`.

use crate::error::{Error, Result};
use crate::types::Info;
use regex::Regex;

#[derive(Debug)]
enum Op {
    Present,
    Eq(String),
    Ne(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Clause {
    path: Vec<String>,
    op: Op,
}

/// Parsed filters: matches when any filter matches.
#[derive(Debug, Default)]
pub struct Filters {
    any: Vec<Vec<Clause>>,
}

/// Bounds what a client can make us compile.
const MAX_FILTER_LEN: usize = 4096;

impl Filters {
    pub fn parse<S: AsRef<str>>(filters: &[S]) -> Result<Filters> {
        let mut any = Vec::new();
        for f in filters {
            let f = f.as_ref();
            if f.trim().is_empty() {
                continue;
            }
            if f.len() > MAX_FILTER_LEN {
                return Err(Error::InvalidArgument("filter too long".into()));
            }
            any.push(
                Parser {
                    s: f.as_bytes(),
                    i: 0,
                    src: f,
                }
                .filter()?,
            );
        }
        Ok(Filters { any })
    }

    pub fn matches(&self, info: &Info) -> bool {
        self.any.is_empty()
            || self
                .any
                .iter()
                .any(|all| all.iter().all(|c| c.matches(info)))
    }
}

impl Clause {
    fn matches(&self, info: &Info) -> bool {
        let Some(v) = field(info, &self.path) else {
            return false;
        };
        match &self.op {
            Op::Present => true,
            Op::Eq(x) => v == x,
            Op::Ne(x) => v != x,
            Op::Matches(re) => re.is_match(v),
        }
    }
}

fn field<'a>(info: &'a Info, path: &[String]) -> Option<&'a str> {
    match path.first()?.as_str() {
        "name" if path.len() == 1 => Some(&info.name),
        "parent" if path.len() == 1 => Some(&info.parent),
        "kind" if path.len() == 1 => Some(info.kind.as_str()),
        "labels" if path.len() > 1 => info.labels.get(&path[1..].join(".")).map(String::as_str),
        _ => None,
    }
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
    src: &'a str,
}

impl Parser<'_> {
    fn err(&self, what: &str) -> Error {
        Error::InvalidArgument(format!("filter {:?} at {}: {what}", self.src, self.i))
    }

    fn skip_ws(&mut self) {
        while self.i < self.s.len() && self.s[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn filter(&mut self) -> Result<Vec<Clause>> {
        let mut clauses = vec![self.clause()?];
        loop {
            self.skip_ws();
            match self.peek() {
                None => return Ok(clauses),
                Some(b',') => {
                    self.i += 1;
                    clauses.push(self.clause()?);
                }
                Some(_) => return Err(self.err("expected ',' or end")),
            }
        }
    }

    fn clause(&mut self) -> Result<Clause> {
        let mut path = vec![self.field()?];
        while self.peek() == Some(b'.') {
            self.i += 1;
            path.push(self.field()?);
        }
        self.skip_ws();
        let op = match (self.peek(), self.s.get(self.i + 1).copied()) {
            (Some(b'='), Some(b'=')) => "==",
            (Some(b'!'), Some(b'=')) => "!=",
            (Some(b'~'), Some(b'=')) => "~=",
            _ => {
                return Ok(Clause {
                    path,
                    op: Op::Present,
                })
            }
        };
        self.i += 2;
        self.skip_ws();
        let value = self.value(op == "~=")?;
        let op = match op {
            "==" => Op::Eq(value),
            "!=" => Op::Ne(value),
            _ => Op::Matches(
                regex::RegexBuilder::new(&value)
                    .size_limit(1 << 20)
                    .build()
                    .map_err(|e| self.err(&format!("bad regexp: {e}")))?,
            ),
        };
        Ok(Clause { path, op })
    }

    fn field(&mut self) -> Result<String> {
        self.skip_ws();
        if self.peek() == Some(b'"') {
            return self.quoted(b'"');
        }
        let start = self.i;
        while self
            .peek()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_')
        {
            self.i += 1;
        }
        if start == self.i {
            return Err(self.err("expected a field name"));
        }
        Ok(self.src[start..self.i].to_string())
    }

    fn value(&mut self, regexp: bool) -> Result<String> {
        match self.peek() {
            Some(b'"') => self.quoted(b'"'),
            Some(b'/') if regexp => self.quoted(b'/'),
            _ => {
                let start = self.i;
                while self.peek().is_some_and(|c| c != b',') {
                    self.i += 1;
                }
                let v = self.src[start..self.i].trim_end();
                if v.is_empty() {
                    return Err(self.err("expected a value"));
                }
                Ok(v.to_string())
            }
        }
    }

    /// A value between `q` delimiters with backslash escapes.
    fn quoted(&mut self, q: u8) -> Result<String> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.err("unterminated quote")),
                Some(c) if c == q => {
                    self.i += 1;
                    break;
                }
                Some(b'\\') => {
                    let Some(n) = self.s.get(self.i + 1).copied() else {
                        return Err(self.err("unterminated escape"));
                    };
                    let c = match n {
                        b'n' => b'\n',
                        b't' => b'\t',
                        // In a /regexp/ keep other escapes for the regex engine.
                        c if q == b'/' && c != b'/' => {
                            out.push(b'\\');
                            c
                        }
                        c => c,
                    };
                    out.push(c);
                    self.i += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
        String::from_utf8(out).map_err(|_| self.err("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Kind;
    use std::time::SystemTime;

    fn info(name: &str, parent: &str, kind: Kind, labels: &[(&str, &str)]) -> Info {
        Info {
            name: name.into(),
            parent: parent.into(),
            kind,
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            created: SystemTime::now(),
            updated: SystemTime::now(),
        }
    }

    fn m(f: &[&str], i: &Info) -> bool {
        Filters::parse(f).unwrap().matches(i)
    }

    #[test]
    fn fields_ops_and_combinators() {
        let a = info(
            "a",
            "",
            Kind::Committed,
            &[("x", "1"), ("containerd.io/gc.root", "t")],
        );
        let b = info("b", "a", Kind::Active, &[("x", "2")]);
        assert!(m(&[], &a));
        assert!(m(&["name==a"], &a) && !m(&["name==a"], &b));
        assert!(m(&["parent==a"], &b) && !m(&["parent==a"], &a));
        assert!(m(&["kind==active"], &b) && !m(&["kind==active"], &a));
        assert!(m(&["labels.x==2"], &b));
        assert!(m(&[r#"labels."containerd.io/gc.root"==t"#], &a));
        assert!(
            Filters::parse(&["labels.containerd.io/gc.root"]).is_err(),
            "'/' needs quotes"
        );
        assert!(
            m(&[r#"labels."containerd.io/gc.root""#], &a)
                && !m(&[r#"labels."containerd.io/gc.root""#], &b)
        );
        assert!(
            m(&["kind==committed,labels.x==1"], &a) && !m(&["kind==committed,labels.x==2"], &a)
        );
        assert!(m(&["name==zz", "name==b"], &b));
        assert!(
            m(&["labels.x!=1"], &b) && !m(&["labels.y!=1"], &b),
            "absent never matches"
        );
        assert!(m(&["name~=/^[ab]$/"], &b) && !m(&["name~=^a"], &b));
        assert!(m(&[r#" name == "a" , parent=="" "#], &a));
    }

    #[test]
    fn bad_filters_are_invalid_argument() {
        for f in [
            "",
            "==x",
            "name==",
            "name==\"x",
            "a,",
            "name~=/(/",
            "labels.\"k",
            "name x",
        ] {
            if f.is_empty() {
                continue;
            }
            assert!(
                matches!(Filters::parse(&[f]), Err(Error::InvalidArgument(_))),
                "{f}"
            );
        }
    }
}

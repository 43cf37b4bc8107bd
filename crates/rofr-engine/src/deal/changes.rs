//! What changes from one version of a deal file to the next (`rofr check NEW --against
//! OLD`): every key added, removed or written differently, named as the files write
//! it, with where the new version (or, for a removal, the old one) writes it.
//!
//! Both files are compared as TOML, not as deals: a change is what a reader of the two
//! files would see, whether or not it changes a rule. Clauses (arrays of tables) are
//! matched by their `name`, else by the provider they are about, else by position, so
//! that reordering clauses changes nothing.

use serde::Serialize;
use toml::de::{DeTable, DeValue};
use toml::Spanned;

use crate::diagnostic::{Diagnostic, Location, SourceMap};

/// One difference between two versions of a deal file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// The key as the files write it, clauses by what identifies them:
    /// `first_refusal["azure-rofr"].window`, `provider["oracle"]`.
    pub key: String,
    /// The old version's value as written; `None` where the key is added.
    pub was: Option<String>,
    /// The new version's value as written; `None` where the key is removed.
    pub now: Option<String>,
    /// Where the new version writes the key, or the old one did for a removal.
    pub location: Location,
}

/// A file's name and text.
pub type Source<'a> = (&'a str, &'a str);

/// Every change from `old` to `new`, in the order of the new file (removals where the
/// old file had them). A file that is not TOML is an error naming its line:column (as
/// from [`super::parse_deal`], a list).
pub fn changes(old: Source<'_>, new: Source<'_>) -> Result<Vec<Change>, Vec<Diagnostic>> {
    let old_table = parse(old)?;
    let new_table = parse(new)?;
    let mut walk = Walk {
        old: SourceMap::new(old.0, old.1),
        new: SourceMap::new(new.0, new.1),
        changes: Vec::new(),
    };
    walk.tables("", old_table.get_ref(), new_table.get_ref());
    Ok(walk.changes)
}

/// The error where `changes` from `old_file` rename the deal: an amendment keeps the
/// deal's name, for a log belongs to one deal.
pub fn renamed(old_file: &str, changes: &[Change]) -> Option<Diagnostic> {
    let renamed = changes.iter().find(|c| c.key == "deal.name")?;
    let message = format!(
        "an amendment keeps the deal's name: {old_file} names it {}",
        renamed.was.as_deref().unwrap_or("nothing")
    );
    Some(
        Diagnostic::error("renamed-deal", renamed.location.clone(), message)
            .key("deal.name")
            .help("a log belongs to one deal: keep `[deal] name`, or start a new log"),
    )
}

fn parse<'i>((file, text): Source<'i>) -> Result<Spanned<DeTable<'i>>, Vec<Diagnostic>> {
    DeTable::parse(text).map_err(|error| {
        let at = error.span().map_or(0, |span| span.start);
        let location = SourceMap::new(file, text).location(at);
        vec![Diagnostic::error(
            "invalid-toml",
            location,
            error.message().to_owned(),
        )]
    })
}

struct Walk<'a> {
    old: SourceMap<'a>,
    new: SourceMap<'a>,
    changes: Vec<Change>,
}

impl Walk<'_> {
    fn tables(&mut self, prefix: &str, old: &DeTable<'_>, new: &DeTable<'_>) {
        for (key, value) in new {
            let path = join(prefix, key.get_ref());
            match old.get(key.get_ref().as_ref()) {
                Some(was) => self.values(&path, was, value),
                None => self.added(path, value),
            }
        }
        for (key, value) in old {
            if !new.contains_key(key.get_ref().as_ref()) {
                self.removed(join(prefix, key.get_ref()), value);
            }
        }
    }

    fn values(&mut self, path: &str, old: &Spanned<DeValue<'_>>, new: &Spanned<DeValue<'_>>) {
        match (old.get_ref(), new.get_ref()) {
            (DeValue::Table(old), DeValue::Table(new)) => self.tables(path, old, new),
            (DeValue::Array(old), DeValue::Array(new)) if is_clauses(old) && is_clauses(new) => {
                self.clauses(path, old, new)
            }
            (was, now) => {
                let (was, now) = (render(was), render(now));
                if was != now {
                    self.changes.push(Change {
                        key: path.to_owned(),
                        was: Some(was),
                        now: Some(now),
                        location: self.new.location(new.span().start),
                    });
                }
            }
        }
    }

    /// Arrays of tables, matched by what identifies each clause.
    fn clauses(&mut self, path: &str, old: &[Spanned<DeValue<'_>>], new: &[Spanned<DeValue<'_>>]) {
        let old_ids: Vec<String> = old
            .iter()
            .enumerate()
            .map(|(i, c)| identity(c, i))
            .collect();
        let new_ids: Vec<String> = new
            .iter()
            .enumerate()
            .map(|(i, c)| identity(c, i))
            .collect();
        for (clause, id) in new.iter().zip(&new_ids) {
            let key = format!("{path}[{id}]");
            match old_ids.iter().position(|o| o == id) {
                Some(at) => self.values(&key, &old[at], clause),
                None => self.added(key, clause),
            }
        }
        for (clause, id) in old.iter().zip(&old_ids) {
            if !new_ids.contains(id) {
                self.removed(format!("{path}[{id}]"), clause);
            }
        }
    }

    fn added(&mut self, key: String, value: &Spanned<DeValue<'_>>) {
        if let Some(clauses) = clauses_of(value) {
            // Each clause of a kind the old version lacks is added on its own.
            return self.clauses(&key, &[], clauses);
        }
        self.changes.push(Change {
            key,
            was: None,
            now: Some(render(value.get_ref())),
            location: self.new.location(value.span().start),
        });
    }

    fn removed(&mut self, key: String, value: &Spanned<DeValue<'_>>) {
        if let Some(clauses) = clauses_of(value) {
            return self.clauses(&key, clauses, &[]);
        }
        self.changes.push(Change {
            key,
            was: Some(render(value.get_ref())),
            now: None,
            location: self.old.location(value.span().start),
        });
    }
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_owned()
    } else {
        format!("{prefix}.{key}")
    }
}

/// The clauses of an array of tables written under a key.
fn clauses_of<'v, 'i>(value: &'v Spanned<DeValue<'i>>) -> Option<&'v [Spanned<DeValue<'i>>]> {
    match value.get_ref() {
        DeValue::Array(items) if is_clauses(items) => Some(items),
        _ => None,
    }
}

fn is_clauses(array: &[Spanned<DeValue<'_>>]) -> bool {
    !array.is_empty() && array.iter().all(|v| v.get_ref().is_table())
}

/// What identifies a clause across versions: its `name`, else the provider it is
/// about (`id`, `holder`, `provider`), else its position.
fn identity(clause: &Spanned<DeValue<'_>>, index: usize) -> String {
    let table = clause.get_ref().as_table();
    ["name", "id", "holder", "provider"]
        .iter()
        .find_map(|key| table?.get(*key)?.get_ref().as_str())
        .map_or_else(|| index.to_string(), |id| format!("{id:?}"))
}

/// A value as TOML would write it inline, so that the same value written the same way
/// compares equal.
fn render(value: &DeValue<'_>) -> String {
    match value {
        DeValue::String(text) => format!("{:?}", text.as_ref()),
        DeValue::Integer(number) => number.as_str().to_owned(),
        DeValue::Float(number) => number.as_str().to_owned(),
        DeValue::Boolean(flag) => flag.to_string(),
        DeValue::Datetime(moment) => moment.to_string(),
        DeValue::Array(items) => {
            let items: Vec<String> = items.iter().map(|v| render(v.get_ref())).collect();
            format!("[{}]", items.join(", "))
        }
        DeValue::Table(table) => {
            let fields: Vec<String> = table
                .iter()
                .map(|(k, v)| format!("{} = {}", k.get_ref(), render(v.get_ref())))
                .collect();
            format!("{{ {} }}", fields.join(", "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OLD: &str = "[deal]\nname = \"d\"\n\n[[provider]]\nid = \"a\"\n\n[[provider]]\nid = \"b\"\nskus = [\"H100\"]\n\n[[first_refusal]]\nholder = \"a\"\nwindow = \"72h\"\n";

    fn changes_to(new: &str) -> Vec<Change> {
        changes(("old.toml", OLD), ("new.toml", new)).expect("both parse")
    }

    #[test]
    fn the_same_file_changes_nothing_and_reordered_clauses_neither() {
        assert_eq!(changes_to(OLD), []);
        let reordered = "[[first_refusal]]\nholder = \"a\"\nwindow = \"72h\"\n\n[[provider]]\nid = \"b\"\nskus = [\"H100\"]\n\n[[provider]]\nid = \"a\"\n\n[deal]\nname = \"d\"\n";
        assert_eq!(changes_to(reordered), []);
    }

    #[test]
    fn each_key_added_removed_or_rewritten_is_named_where_it_is_written() {
        let new = "[deal]\nname = \"d\"\n\n[[provider]]\nid = \"a\"\n\n[[provider]]\nid = \"b\"\nskus = [\"H100\", \"H200\"]\n\n[[provider]]\nid = \"c\"\n";
        let found = changes_to(new);
        let keys: Vec<&str> = found.iter().map(|c| c.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "provider[\"b\"].skus",
                "provider[\"c\"]",
                "first_refusal[\"a\"]"
            ]
        );
        assert_eq!(found[0].was.as_deref(), Some("[\"H100\"]"));
        assert_eq!(found[0].now.as_deref(), Some("[\"H100\", \"H200\"]"));
        assert_eq!(found[0].location.to_string(), "new.toml:9:8");
        assert_eq!(found[1].was, None);
        assert_eq!(found[1].location.to_string(), "new.toml:11:1", "its header");
        // A removal points where the old version wrote it.
        assert_eq!(found[2].now, None);
        assert_eq!(found[2].location.file, "old.toml");
        assert!(found[2].was.as_deref().unwrap().contains("holder = \"a\""));
    }

    #[test]
    fn a_file_that_is_not_toml_is_named_at_its_line_and_column() {
        let errors = changes(("old.toml", OLD), ("new.toml", "[deal]\nname = \n")).unwrap_err();
        let error = &errors[0];
        assert_eq!(error.code, "invalid-toml");
        assert_eq!(error.location.file, "new.toml");
        assert_eq!(error.location.line, 2);
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// Hostile text never panics: it is TOML, with its changes, or an error
        /// naming a place inside the file. A file against itself changes nothing.
        #[test]
        fn any_text_is_compared_or_refused_at_a_place_in_it(
            text in "(\\[\\[?[a-z_]{1,8}\\]\\]?\n|[a-z_]{1,8} = (\"[^\"\\\\\n]{0,8}\"|[0-9]{1,4}|\\[[0-9, ]{0,8}\\]|\\{[a-z =0-9,]{0,12}\\})\n|[\\x00-\\x7f]{0,6}\n){0,12}",
        ) {
            let old = "[deal]\nname = \"d\"\n";
            match changes(("old.toml", old), ("new.toml", &text)) {
                Ok(_) => prop_assert_eq!(changes(("a", &text), ("b", &text)).unwrap(), []),
                Err(errors) => {
                    let at = &errors[0].location;
                    prop_assert_eq!(at.file.as_str(), "new.toml");
                    prop_assert!(at.line >= 1 && at.line <= text.lines().count().max(1) + 1);
                }
            }
        }
    }
}

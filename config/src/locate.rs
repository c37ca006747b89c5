//! Maps field paths (`racks[3].budget_kw`) to line and column in the site file, and
//! byte offsets back to field paths, using `toml_edit`'s spans.

use toml_edit::{Document, Item, Table, Value};

/// Line and column (both 1-based, column in characters) of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before
        .get(line_start..)
        .map_or(1, |s| s.chars().count() + 1);
    (line, col)
}

enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

fn segments(path: &str) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if !key.is_empty() {
            out.push(Seg::Key(key));
        }
        for idx in rest.split('[').filter(|s| !s.is_empty()) {
            if let Ok(n) = idx.trim_end_matches(']').parse() {
                out.push(Seg::Index(n));
            }
        }
    }
    out
}

/// Byte offset of the deepest part of `path` present in the document: the key of the
/// last field when it is there, else the table or array that should hold it.
pub fn offset_of(doc: &Document<String>, path: &str) -> Option<usize> {
    let mut best: Option<usize> = None;
    let mut cur: Cursor<'_> = Cursor::Table(doc.as_table());
    for seg in segments(path) {
        let next = match (&cur, seg) {
            (Cursor::Table(t), Seg::Key(k)) => {
                if let Some(key) = t.key(k) {
                    best = key.span().map(|s| s.start).or(best);
                }
                t.get(k).map(Cursor::from_item)
            }
            (Cursor::Inline(t), Seg::Key(k)) => {
                if let Some(key) = t.key(k) {
                    best = key.span().map(|s| s.start).or(best);
                }
                t.get(k).map(Cursor::from_value)
            }
            (Cursor::Tables(a), Seg::Index(i)) => a.get(i).map(|t| {
                if let Some(s) = t.span() {
                    best = Some(s.start);
                }
                Cursor::Table(t)
            }),
            (Cursor::Array(a), Seg::Index(i)) => a.get(i).map(|v| {
                if let Some(s) = v.span() {
                    best = Some(s.start);
                }
                Cursor::from_value(v)
            }),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    best
}

enum Cursor<'a> {
    Table(&'a Table),
    Inline(&'a toml_edit::InlineTable),
    Tables(&'a toml_edit::ArrayOfTables),
    Array(&'a toml_edit::Array),
    Leaf,
}

impl<'a> Cursor<'a> {
    fn from_item(i: &'a Item) -> Cursor<'a> {
        match i {
            Item::Table(t) => Cursor::Table(t),
            Item::ArrayOfTables(a) => Cursor::Tables(a),
            Item::Value(v) => Cursor::from_value(v),
            Item::None => Cursor::Leaf,
        }
    }

    fn from_value(v: &'a Value) -> Cursor<'a> {
        match v {
            Value::InlineTable(t) => Cursor::Inline(t),
            Value::Array(a) => Cursor::Array(a),
            _ => Cursor::Leaf,
        }
    }
}

fn contains(span: Option<std::ops::Range<usize>>, off: usize) -> bool {
    span.is_some_and(|s| s.start <= off && off < s.end.max(s.start + 1))
}

/// The field path of the deepest item whose key or value covers `offset` (for errors
/// that come with a position only, such as serde's).
pub fn path_at(doc: &Document<String>, offset: usize) -> String {
    let mut path = String::new();
    walk_table(doc.as_table(), offset, &mut path);
    path
}

fn push_key(path: &mut String, k: &str) {
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(k);
}

fn walk_table(t: &Table, off: usize, path: &mut String) -> bool {
    for (k, item) in t.iter() {
        let key_hit = t.key(k).is_some_and(|key| contains(key.span(), off));
        match item {
            Item::ArrayOfTables(a) => {
                for (i, sub) in a.iter().enumerate() {
                    let mut p = path.clone();
                    push_key(&mut p, k);
                    p.push_str(&format!("[{i}]"));
                    let mut inner = p.clone();
                    if walk_table(sub, off, &mut inner) {
                        *path = inner;
                        return true;
                    }
                    if contains(sub.span(), off) {
                        *path = p;
                        return true;
                    }
                }
            }
            Item::Table(sub) => {
                let mut p = path.clone();
                push_key(&mut p, k);
                let mut inner = p.clone();
                if walk_table(sub, off, &mut inner) {
                    *path = inner;
                    return true;
                }
                if key_hit || contains(sub.span(), off) {
                    *path = p;
                    return true;
                }
            }
            Item::Value(v) => {
                if key_hit || contains(v.span(), off) {
                    push_key(path, k);
                    if let Value::InlineTable(it) = v {
                        for (ik, iv) in it.iter() {
                            let hit = it.key(ik).is_some_and(|key| contains(key.span(), off))
                                || contains(iv.span(), off);
                            if hit {
                                push_key(path, ik);
                                break;
                            }
                        }
                    }
                    return true;
                }
            }
            Item::None => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "[site]\nid = \"s\"\n\n[[racks]]\nid = \"a\"\n\n[[racks]]\nid = \"b\"\nbudget_kw = 5\nouter = { device = \"d\", point = \"p\" }\n";

    #[test]
    fn finds_fields_in_arrays_of_tables() {
        let doc = Document::parse(DOC.to_owned()).unwrap();
        let off = offset_of(&doc, "racks[1].budget_kw").unwrap();
        assert_eq!(line_col(DOC, off), (9, 1));
        // A missing field points at its table.
        let off = offset_of(&doc, "racks[0].budget_kw").unwrap();
        assert_eq!(line_col(DOC, off).0, 4);
        let off = offset_of(&doc, "racks[1].outer.point").unwrap();
        assert_eq!(line_col(DOC, off), (10, 25));
    }

    #[test]
    fn path_of_an_offset() {
        let doc = Document::parse(DOC.to_owned()).unwrap();
        let off = DOC.find("budget_kw").unwrap();
        assert_eq!(path_at(&doc, off), "racks[1].budget_kw");
        let off = DOC.find("point").unwrap();
        assert_eq!(path_at(&doc, off), "racks[1].outer.point");
    }
}

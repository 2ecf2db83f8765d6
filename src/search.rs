//! Typo tolerance for fact search: when neither the words nor trigrams match,
//! each query word is replaced by the deal's own lexemes within a small edit
//! distance (Damerau-Levenshtein, optimal string alignment), so `lisence` still
//! finds `license`. The ranked query itself is SQL (`sql/search.sql`).
use pgrx::prelude::*;
use pgrx::Uuid;

/// Edit distance with adjacent transpositions (optimal string alignment), kept
/// in three rolling rows: memory grows with the shorter word only.
pub fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut before: Vec<usize> = vec![0; b.len() + 1];
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur: Vec<usize> = vec![0; b.len() + 1];
    for i in 1..=a.len() {
        cur[0] = i;
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            cur[j] = (prev[j] + 1).min(cur[j - 1] + 1).min(prev[j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                cur[j] = cur[j].min(before[j - 2] + 1);
            }
        }
        std::mem::swap(&mut before, &mut prev);
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// True when `a` and `b` are at most `max` edits apart. Words whose lengths
/// differ by more than `max` are rejected without computing the distance.
fn within(a: &str, b: &str, max: usize) -> bool {
    a.chars().count().abs_diff(b.chars().count()) <= max && edit_distance(a, b) <= max
}

/// How many edits a word of this length may be away from a match.
fn allowed_edits(len: usize) -> usize {
    match len {
        0..=3 => 0,
        4..=5 => 1,
        _ => 2,
    }
}

/// A tsquery (as text) matching the deal's lexemes that are within a small edit
/// distance of each query word (words ANDed, alternatives ORed), or NULL.
#[pg_extern(stable, parallel_safe)]
fn typo_tsquery(deal_id: Uuid, query: &str, cfg: default!(&str, "'english'")) -> Option<String> {
    let words: Vec<String> = crate::spi::connect(|c| {
        crate::diff::require_deal(deal_id);
        c.select("SELECT lexeme FROM pg_catalog.unnest(pg_catalog.to_tsvector($1::pg_catalog.regconfig, $2))", None, &[cfg.into(), query.into()])
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            .unwrap_or_default()
    });
    if words.is_empty() {
        return None;
    }
    // the deal's vocabulary (its current live facts' lexemes)
    let vocabulary: Vec<String> = crate::spi::connect(|c| {
        let stat = format!(
            "SELECT search_vector FROM deal_store.facts WHERE deal_id = '{deal_id}' AND deleted_at IS NULL AND superseded_at IS NULL"
        );
        c.select("SELECT word FROM pg_catalog.ts_stat($1)", None, &[stat.into()])
            .map(|t| t.filter_map(|r| r.get::<String>(1).ok().flatten()).collect())
            .unwrap_or_default()
    });
    let mut clauses = Vec::with_capacity(words.len());
    for w in &words {
        let max = allowed_edits(w.chars().count());
        let alternatives: Vec<String> = vocabulary
            .iter()
            .filter(|v| {
                check_for_interrupts!();
                within(w, v, max)
            })
            .map(|v| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''")))
            .collect();
        if alternatives.is_empty() {
            return None;
        }
        clauses.push(format!("({})", alternatives.join(" | ")));
    }
    Some(clauses.join(" & "))
}

#[cfg(any(test, feature = "pg_test"))]
#[pg_schema]
mod tests {
    use super::*;

    #[pg_test]
    fn distances() {
        assert_eq!(edit_distance("lisenc", "licens"), 2);
        assert_eq!(edit_distance("licenc", "licens"), 1);
        assert_eq!(edit_distance("form", "from"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("oracle", "oracle"), 0);
    }
}

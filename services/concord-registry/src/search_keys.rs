//! Transliteration-tolerant search keys for personal names.
//!
//! The same person is recorded as "Mohammed Abdul Rahman al-Hassan", "Muhammad Abd al-Rahman
//! Hassan" or "محمد عبد الرحمن الحسن". Each name is split into [`NameToken`]s whose `skeleton` is
//! identical across those spellings, so stored keys can be matched with plain SQL equality on
//! both SQLite and PostgreSQL; `folded` keeps the spelling itself for ranking exact hits first.
//!
//! Rules, in order:
//! - Unicode is NFKC-normalised, lowercased, and Latin diacritics, apostrophes, ʿayn/hamza signs,
//!   Arabic harakat and tatweel are removed; other non-letters separate words.
//! - Connectors (bin, ibn, bint, ben, بن, ابن, بنت) and articles (standalone al/el/ul/ال, a
//!   hyphenated prefix such as al-, ar-, ash-, ed-, or an Arabic ال prefix) are dropped.
//! - "Abd" (abd, abdul, abdel, abdur, عبد, ...) merges with the next word; single words such as
//!   "Abdulrahman" or "عبدالرحمن" are read as "abd" + rest.
//! - The skeleton keeps consonants only, mapped so that both scripts meet: kh/خ → x, sh/ch/ش → c,
//!   gh/g/j/غ/ج → j, th/ث → t, dh/ذ/ظ → z, q/k/c/ق/ك → k, v/ڤ → f, p/پ → b. Vowels, alif, hamza,
//!   ʿayn and ta marbuta vanish; y/w (ي/و) count only as a first letter. Repeated letters
//!   collapse, and a final h after a vowel (or a final ح/ه) is dropped when two consonants
//!   remain, because Latin writes ة as "-ah" ("Fatimah", "Abdullah").
//!
//! Known limits: skeletons are coarse by design ("Hassan"/"Hussein", "Mohammed"/"Mahmoud" share
//! one), and Latin letter pairs that are not digraphs ("Adham", "Fathi", "Ishaq") are misread
//! unless an apostrophe or diacritic separates them ("Is'haq", "Isḥāq").

use std::collections::HashSet;

use unicode_normalization::char::{decompose_canonical, is_combining_mark};
use unicode_normalization::UnicodeNormalization;
use Sound::{ArabicH, Cons, Glide, Vowel};

/// One token of a name: its folded exact form and its phonetic skeleton.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NameToken {
    /// Lowercase, diacritics removed, Arabic transliterated letter-by-letter to Latin; used to
    /// rank exact spellings higher.
    pub folded: String,
    /// Consonant skeleton shared by transliteration variants, e.g. "mhmd" for
    /// Mohammed/Muhammad/Mohamed/محمد.
    pub skeleton: String,
}

/// How one letter (or Latin digraph) contributes to the skeleton.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sound {
    /// A vowel or vowel carrier; never part of the skeleton.
    Vowel,
    /// A consonant, already mapped to its skeleton letter.
    Cons(char),
    /// y/w (ي/و): a consonant as the first letter, otherwise a long vowel.
    Glide(char),
    /// Arabic ح or ه, which Latin cannot tell apart from a final "h" written for ة.
    ArabicH,
}

/// Forms of "Abd", longest first: as a whole word they take the next word as complement, as
/// the start of a longer word ("Abdulrahman") they become "abd". "abdu" is left out on purpose:
/// "Abdu"/"Abduh" is the name عبده, not "Abd".
const ABD: &str = "abdoul abdul abdel abdal abdol abdur abdar abd عبدال عبد";
const CONNECTORS: [&str; 8] = ["bin", "ibn", "bint", "ben", "بن", "ابن", "إبن", "بنت"];
const ARTICLES: [&str; 4] = ["al", "el", "ul", "ال"];

/// Splits a full name (Arabic script, Latin, or mixed) into tokens. Connectors (bin, ibn, bint,
/// ben, al/el as separate words, "ال" article) are not tokens of their own. Tokens whose
/// skeleton would be empty are dropped. Duplicate tokens are removed, order kept.
pub fn tokens(full_name: &str) -> Vec<NameToken> {
    let mut seen = HashSet::new();
    words(full_name)
        .iter()
        .map(|word| token(&word.chars().collect::<Vec<_>>()))
        .filter(|t| !t.skeleton.is_empty() && seen.insert(t.clone()))
        .collect()
}

/// ISO 15924 script of a name: "Arab" if it contains Arabic letters and no Latin letters,
/// "Latn" if Latin letters only, "Zyyy" otherwise (mixed or no letters).
pub fn script_of(full_name: &str) -> &'static str {
    let letters = || full_name.chars().filter(|c| c.is_alphabetic());
    match (letters().any(is_arabic), letters().any(is_latin)) {
        (true, false) => "Arab",
        (false, true) => "Latn",
        _ => "Zyyy",
    }
}

/// Arabic blocks, including presentation forms (NFKC maps those to plain letters first).
fn is_arabic(c: char) -> bool {
    matches!(c, '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{08A0}'..='\u{08FF}')
        || matches!(c, '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}')
}

fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic()
        || matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' | '\u{FF21}'..='\u{FF5A}')
}

/// Signs for ʿayn, hamza and elision: they vanish, but still keep "Is'haq" from reading "sh".
fn is_apostrophe(c: char) -> bool {
    matches!(c, '\'' | '`' | '\u{2B9}'..='\u{2BF}' | '\u{2018}'..='\u{201B}' | '\u{2032}')
}

/// Soft hyphens, tatweel and invisible format characters vanish without a trace.
fn is_silent(c: char) -> bool {
    matches!(c, '\u{AD}' | '\u{640}' | '\u{61C}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{2064}')
        || c == '\u{FEFF}'
}

/// Each Arabic letter followed by its Latin spelling in `folded`. Its skeleton is that of the
/// spelling, so "ث" sounds like "th"; ء spells as nothing and so is a vowel carrier like ا or ع.
const ARABIC: &str = "اa آa أa ٱa ىa عa ةa إi ئi ؤu ۆu ەe ێe ء بb پp تt طt ثth جj حh هh ھh خkh \
    دd ضd ذdh رr ڕr زz ظz ژzh سs صs شsh چch غgh فf ڤv قq كk کk گg لl ڵl مm نn وw يy یy";

/// The `ARABIC` table as a map, parsed once: the lookup runs for every letter of every name
/// stored or searched, and a scan of the table string took 15% of bulk import time.
static ARABIC_MAP: std::sync::LazyLock<std::collections::HashMap<char, &'static str>> =
    std::sync::LazyLock::new(|| {
        ARABIC
            .split(' ')
            .filter_map(|entry| {
                let mut chars = entry.chars();
                let letter = chars.next()?;
                Some((letter, chars.as_str()))
            })
            .collect()
    });

/// Arabic letter → (Latin spelling for `folded`, skeleton behaviour).
fn arabic_letter(c: char) -> Option<(&'static str, Sound)> {
    let latin = *ARABIC_MAP.get(&c)?;
    let mut chars = latin.chars();
    let sound = match (chars.next(), chars.next()) {
        (Some('h'), None) => ArabicH,
        (Some(first), next) => latin_sound(first, next).0,
        (None, _) => Vowel,
    };
    Some((latin, sound))
}

/// Latin letter (and the one after it, for digraphs) → (skeleton behaviour, letters consumed).
fn latin_sound(c: char, next: Option<char>) -> (Sound, usize) {
    match (c, next) {
        ('k', Some('h')) => (Cons('x'), 2),
        ('g' | 'z', Some('h')) => (Cons('j'), 2),
        ('s' | 'c', Some('h')) => (Cons('c'), 2),
        ('t', Some('h')) => (Cons('t'), 2),
        ('d', Some('h')) => (Cons('z'), 2),
        ('p', Some('h')) => (Cons('f'), 2),
        ('a' | 'e' | 'i' | 'o' | 'u', _) => (Vowel, 1),
        ('y' | 'w', _) => (Glide(c), 1),
        ('q' | 'k' | 'c', _) => (Cons('k'), 1),
        ('g' | 'j', _) => (Cons('j'), 1),
        ('v', _) => (Cons('f'), 1),
        ('p', _) => (Cons('b'), 1),
        _ => (Cons(c), 1),
    }
}

/// Kurdish and Turkish letters whose base letter would lose a sound, and ı, which has no base.
const SPELLED: &str = "şsh šsh çch čch žzh ıi";

/// Normalised text: letters, '\'' for apostrophes, '-' for hyphens, ' ' for other separators.
fn normalise(full_name: &str) -> String {
    let mut out = String::new();
    for c in full_name.chars().filter(|c| !is_silent(*c)).nfkc() {
        if is_arabic(c) {
            // Harakat, tatweel and unknown Arabic letters vanish; Arabic punctuation separates.
            if arabic_letter(c).is_some() {
                out.push(c);
            } else if !(c.is_alphabetic() || is_combining_mark(c)) {
                out.push(' ');
            }
            continue;
        }
        for lower in c.to_lowercase() {
            let mut push = |d: char| {
                if matches!(d, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}') {
                    out.push('-');
                } else if is_apostrophe(d) {
                    out.push('\'');
                } else if d.is_alphabetic() {
                    out.push(d);
                } else if !is_combining_mark(d) {
                    out.push(' ');
                }
            };
            if let Some(spelled) = SPELLED.split(' ').find_map(|e| e.strip_prefix(lower)) {
                spelled.chars().for_each(push);
            } else {
                // A letter with a diacritic ("ḥ" in "Isḥāq") is never half of a digraph.
                if !lower.is_ascii() {
                    push('\'');
                }
                decompose_canonical(lower, push);
            }
        }
    }
    out
}

/// A hyphenated Latin article: a/e/u + "l" or an assimilated sun letter ("ar-", "ash-", "ed-").
fn is_hyphen_article(word: &str) -> bool {
    let mut chars = word.chars();
    let sun = ["l", "t", "th", "d", "dh", "r", "z", "s", "sh", "n"];
    matches!(chars.next(), Some('a' | 'e' | 'u')) && sun.contains(&chars.as_str())
}

/// The words that become tokens, after dropping connectors and articles and merging "Abd".
fn words(full_name: &str) -> Vec<String> {
    let text = normalise(full_name);
    let mut kept = text.split_inclusive([' ', '-']).filter_map(|piece| {
        let w = piece.trim_end_matches([' ', '-']).trim_matches('\'');
        let article = piece.ends_with('-') && is_hyphen_article(w);
        if w.is_empty() || article || CONNECTORS.contains(&w) || ARTICLES.contains(&w) {
            return None;
        }
        let stripped = w.strip_prefix("ال").filter(|rest| !rest.is_empty());
        Some(stripped.unwrap_or(w).to_owned())
    });

    let mut out = Vec::new();
    while let Some(word) = kept.next() {
        // عبد folds to "abd" anyway, so both scripts can share the Latin head. The space marks
        // the joint, where no digraph may form ("Abdulhamid" is not "abdh" + "amid").
        match ABD.split(' ').find_map(|abd| word.strip_prefix(abd)) {
            // "Abd" alone means nothing; it names the person only together with what follows.
            Some("") => out.push(format!("abd {}", kept.next().unwrap_or_default())),
            Some(rest) => out.push(format!("abd {rest}")),
            None => out.push(word),
        }
    }
    out
}

/// Folds one normalised word and computes its skeleton. Apostrophes, and the space at an "Abd"
/// joint, are skipped but keep the letters on either side from forming a digraph.
fn token(word: &[char]) -> NameToken {
    let mut folded = String::new();
    let mut sounds = Vec::with_capacity(word.len());
    let mut i = 0;
    while let Some(&c) = word.get(i) {
        if c == ' ' || c == '\'' {
            i += 1;
            continue;
        }
        let initial = sounds.is_empty();
        let (sound, len) = match arabic_letter(c) {
            Some((latin, sound)) => {
                // Medial و/ي are long vowels, so they read better as u/i.
                folded.push_str(match sound {
                    Glide('w') if !initial => "u",
                    Glide(_) if !initial => "i",
                    _ => latin,
                });
                (sound, 1)
            }
            None => {
                let next = word.get(i + 1).copied();
                let (sound, len) = latin_sound(c, next);
                folded.push(c);
                folded.extend(next.filter(|_| len == 2));
                (sound, len)
            }
        };
        sounds.push(sound);
        i += len;
    }
    let skeleton = skeleton(&sounds);
    NameToken { folded, skeleton }
}

fn skeleton(sounds: &[Sound]) -> String {
    let mut out = String::new();
    let mut last = None;
    for (i, sound) in sounds.iter().enumerate() {
        let c = match *sound {
            Cons(c) => c,
            Glide(c) if i == 0 => c,
            ArabicH => 'h',
            Vowel | Glide(_) => continue,
        };
        if last != Some(c) {
            out.push(c);
            last = Some(c);
        }
    }
    // A final "h" is usually ة spelled out ("Fatimah"); Arabic final ح/ه must match the Latin
    // that drops it ("Saleh"), but short names keep it so "Taha"/طه and "Allah" stay whole.
    let soft_final_h = matches!(sounds, [.., ArabicH] | [.., Vowel | Glide(_), Cons('h')]);
    if soft_final_h && out.ends_with('h') && out.chars().count() >= 3 {
        out.pop();
    }
    out
}

#[cfg(test)]
#[allow(clippy::expect_used, clippy::unwrap_used)]
mod tests {
    use super::*;

    fn skeletons(name: &str) -> Vec<String> {
        tokens(name).into_iter().map(|t| t.skeleton).collect()
    }

    fn folded(name: &str) -> Vec<String> {
        tokens(name).into_iter().map(|t| t.folded).collect()
    }

    /// Every '|'-separated spelling must give the same, non-empty skeleton sequence.
    fn assert_same(spellings: &str) {
        let mut names = spellings.split('|');
        let first = names.next().unwrap_or_default();
        let expected = skeletons(first);
        assert!(!expected.is_empty(), "{first} has no tokens");
        for name in names {
            assert_eq!(skeletons(name), expected, "{name} vs {first}");
        }
    }

    #[test]
    fn single_name_variants_share_a_skeleton() {
        assert_same("Mohammed|Muhammad|Mohamed|Mohammad|Muhammed|محمد|مُحَمَّد");
        assert_same("al-Hassan|Al Hassan|Hassan|El-Hassan|الحسن|حسن");
        assert_same("Ahmed|Ahmad|أحمد|أَحْمَد");
        assert_same("Yusuf|Youssef|Yousef|يوسف");
        assert_same("Hussein|Husayn|Hussain|Husein|حسين");
        assert_same("Fatima|Fatimah|Fatma|فاطمة|فاطمه");
        assert_same("Khaled|Khalid|خالد|Xalid");
        assert_same("Omar|Umar|ʿUmar|عمر");
        assert_same("Usama|Osama|Oussama|أسامة");
        assert_same("Saleh|Salih|صالح");
        assert_same("Is'haq|Isḥāq|إسحاق");
        assert_same("Taha|طه");
    }

    #[test]
    fn abd_compounds_share_a_skeleton() {
        assert_same(
            "Abdul Rahman|Abdulrahman|Abd al-Rahman|Abd ar-Rahman|Abd-ar-Rahman|Abdelrahman\
             |Abdurrahman|ʿAbd al-Raḥmān|عبد الرحمن|عبدالرحمن",
        );
        assert_same("Abdullah|Abdallah|Abd Allah|عبدالله|عبد الله|عبد اللّٰه");
        assert_same("Abdulaziz|Abdel-Aziz|Abd al Aziz|عبد العزيز");
        assert_same("Abdulhamid|Abdul Hamid|Abd al-Hamid|عبد الحميد|عبدالحميد");
        // عبده is a name of its own, not "Abd" + the next word.
        assert_same("Abdu Hassan|Abduh Hassan|عبده حسن");
        assert_ne!(skeletons("Abdu Hassan"), skeletons("عبد حسن"));
    }

    #[test]
    fn full_names_match_across_scripts() {
        assert_same(
            "Mohammed Abdul Rahman al-Hassan|محمد عبد الرحمن الحسن|Muhammad Abd al-Rahman Hassan",
        );
        let keys = skeletons("محمد عبد الرحمن الحسن");
        assert_eq!(keys, ["mhmd", "bdrhmn", "hsn"]);
        assert_same("Ahmed bin Khalid|أحمد بن خالد|Ahmad ibn Khaled");
        assert_same("Nur ad-Din|نور الدين");
    }

    #[test]
    fn distinct_names_do_not_collide() {
        for pair in ["Ahmed|Mahmoud", "Ali|Omar", "Khaled|Walid", "Hassan|Ahmed"] {
            let (a, b) = pair.split_once('|').expect("pair");
            assert_ne!(skeletons(a), skeletons(b), "{a} vs {b}");
        }
    }

    #[test]
    fn folded_keeps_the_spelling() {
        assert_eq!(folded("Abdul Rahman"), ["abdrahman"]);
        assert_eq!(folded("José al-Ḥasan"), ["jose", "hasan"]);
        assert_eq!(folded("Alhassan Ali"), ["alhassan", "ali"]);
        assert_eq!(folded("يوسف علي"), ["yusf", "ali"]);
        assert_ne!(folded("Mohammed"), folded("Muhammad"));
    }

    #[test]
    fn duplicates_connectors_and_empty_input() {
        assert_eq!(tokens("Ali Ali").len(), 1);
        assert!(tokens("").is_empty());
        assert!(tokens("  -- ").is_empty());
        assert!(tokens("al bin ال بن").is_empty());
        assert!(tokens("\u{0301}\u{064E}ـ 123 !?").is_empty());
    }

    #[test]
    fn odd_and_long_input_does_not_panic() {
        let long = "محمد Mohammed-al-ʿAli ﷲ 😀 \u{0301}x ".repeat(20_000);
        assert!(!tokens(&long).is_empty());
        let odd = "ـــ|-al-|abd|عبد|ال|İ|ǅ|\u{FFFF}\u{10FFFF}|ﻻ|h|ه|'|ʿ-ʿ";
        for s in odd.split('|') {
            let _ = (tokens(s), script_of(s));
        }
    }

    #[test]
    fn script_detection() {
        assert_eq!(script_of("محمد عبد الرحمن"), "Arab");
        assert_eq!(script_of("Muhammad ʿAbd al-Raḥmān"), "Latn");
        assert_eq!(script_of("محمد Ali"), "Zyyy");
        assert_eq!(script_of(""), "Zyyy");
        assert_eq!(script_of("123 -"), "Zyyy");
    }
}

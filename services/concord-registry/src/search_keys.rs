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
//! one), and Latin digraphs that are really two letters ("Adham", "Fathi", "Ishaq") misread.

use std::collections::HashSet;

use unicode_normalization::char::{decompose_canonical, is_combining_mark};
use unicode_normalization::UnicodeNormalization;

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

const ABD_AR: &str = "عبد";
/// Words that are "Abd" and take the next word as their complement.
const ABD_WORDS: [&str; 8] = [
    "abd", "abdul", "abdel", "abdal", "abdol", "abdur", "abdar", "abdoul",
];
/// Prefixes that mark a single word as "Abd" + article + complement. "abdu" is left out on
/// purpose: "Abdu"/"Abduh" is the name عبده, not "Abd".
const ABD_PREFIXES: [&str; 7] = [
    "abdoul", "abdul", "abdel", "abdal", "abdol", "abdur", "abdar",
];
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
    let letters = full_name.chars().filter(|c| c.is_alphabetic());
    let (arabic, latin) = letters.fold((false, false), |(ar, la), c| {
        (
            ar || is_arabic(c) || matches!(c, '\u{FB50}'..='\u{FDFF}' | '\u{FE70}'..='\u{FEFF}'),
            la || is_latin(c),
        )
    });
    match (arabic, latin) {
        (true, false) => "Arab",
        (false, true) => "Latn",
        _ => "Zyyy",
    }
}

fn is_arabic(c: char) -> bool {
    matches!(c, '\u{0600}'..='\u{06FF}' | '\u{0750}'..='\u{077F}' | '\u{08A0}'..='\u{08FF}')
}

fn is_latin(c: char) -> bool {
    c.is_ascii_alphabetic()
        || matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}' | '\u{2C60}'..='\u{2C7F}')
        || matches!(c, '\u{A720}'..='\u{A7FF}' | '\u{FF21}'..='\u{FF3A}' | '\u{FF41}'..='\u{FF5A}')
}

/// Signs for ʿayn, hamza and elision vanish inside a word instead of splitting it.
fn is_silent(c: char) -> bool {
    matches!(
        c,
        '\'' | '`'
            | '\u{00AD}'
            | '\u{00B4}'
            | '\u{02B9}'..='\u{02BF}'
            | '\u{0640}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2018}'..='\u{201B}'
            | '\u{2032}'
            | '\u{2060}'..='\u{2064}'
            | '\u{FEFF}'
    )
}

fn is_hyphen(c: char) -> bool {
    matches!(c, '-' | '\u{2010}'..='\u{2015}' | '\u{2212}')
}

/// Arabic letter → (Latin transliteration for `folded`, skeleton behaviour).
fn arabic_letter(c: char) -> Option<(&'static str, Sound)> {
    use Sound::{ArabicH, Cons, Glide, Vowel};
    Some(match c {
        'ا' | 'آ' | 'أ' | 'ٱ' | 'ى' | 'ع' | 'ة' => ("a", Vowel),
        'إ' | 'ئ' => ("i", Vowel),
        'ؤ' | 'ۆ' => ("u", Vowel),
        'ە' | 'ێ' => ("e", Vowel),
        'ء' => ("", Vowel),
        'ب' => ("b", Cons('b')),
        'پ' => ("p", Cons('b')),
        'ت' | 'ط' => ("t", Cons('t')),
        'ث' => ("th", Cons('t')),
        'ج' => ("j", Cons('j')),
        'ح' | 'ه' | 'ھ' => ("h", ArabicH),
        'خ' => ("kh", Cons('x')),
        'د' | 'ض' => ("d", Cons('d')),
        'ذ' => ("dh", Cons('z')),
        'ر' | 'ڕ' => ("r", Cons('r')),
        'ز' | 'ظ' => ("z", Cons('z')),
        'ژ' => ("zh", Cons('j')),
        'س' | 'ص' => ("s", Cons('s')),
        'ش' => ("sh", Cons('c')),
        'چ' => ("ch", Cons('c')),
        'غ' => ("gh", Cons('j')),
        'ف' => ("f", Cons('f')),
        'ڤ' => ("v", Cons('f')),
        'ق' => ("q", Cons('k')),
        'ك' | 'ک' => ("k", Cons('k')),
        'گ' => ("g", Cons('j')),
        'ل' | 'ڵ' => ("l", Cons('l')),
        'م' => ("m", Cons('m')),
        'ن' => ("n", Cons('n')),
        'و' => ("w", Glide('w')),
        'ي' | 'ی' => ("y", Glide('y')),
        _ => return None,
    })
}

/// Latin letter (and the one after it, for digraphs) → (skeleton behaviour, letters consumed).
fn latin_sound(c: char, next: Option<char>) -> (Sound, usize) {
    use Sound::{Cons, Glide, Vowel};
    let digraph = match (c, next) {
        ('k', Some('h')) => Some('x'),
        ('g' | 'z', Some('h')) => Some('j'),
        ('s' | 'c', Some('h')) => Some('c'),
        ('t', Some('h')) => Some('t'),
        ('d', Some('h')) => Some('z'),
        ('p', Some('h')) => Some('f'),
        _ => None,
    };
    if let Some(d) = digraph {
        return (Cons(d), 2);
    }
    let sound = match c {
        'a' | 'e' | 'i' | 'o' | 'u' => Vowel,
        'y' | 'w' => Glide(c),
        'q' | 'k' | 'c' => Cons('k'),
        'g' | 'j' => Cons('j'),
        'v' => Cons('f'),
        'p' => Cons('b'),
        _ => Cons(c),
    };
    (sound, 1)
}

/// Normalised text: letters, '-' for hyphens and ' ' for any other separator.
fn normalise(full_name: &str) -> Vec<char> {
    let mut out = Vec::new();
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
            // Letters that do not decompose to ASCII, or whose base letter would lose a sound.
            let spelled = match lower {
                'ş' | 'š' => "sh",
                'ç' | 'č' => "ch",
                'ž' => "zh",
                'ß' => "ss",
                'ı' => "i",
                'æ' => "ae",
                'œ' => "oe",
                'ø' => "o",
                'đ' | 'ð' => "d",
                'ł' => "l",
                'þ' => "th",
                _ => "",
            };
            let push = |d: char| {
                if is_hyphen(d) {
                    out.push('-');
                } else if d.is_alphabetic() {
                    out.push(d);
                } else if !(is_combining_mark(d) || is_silent(d)) {
                    out.push(' ');
                }
            };
            if spelled.is_empty() {
                decompose_canonical(lower, push);
            } else {
                spelled.chars().for_each(push);
            }
        }
    }
    out
}

/// A hyphenated Latin article: a/e/u + "l" or an assimilated sun letter ("ar-", "ash-", "ed-").
fn is_hyphen_article(word: &str) -> bool {
    let mut chars = word.chars();
    matches!(chars.next(), Some('a' | 'e' | 'u'))
        && matches!(
            chars.as_str(),
            "l" | "t" | "th" | "d" | "dh" | "r" | "z" | "s" | "sh" | "n"
        )
}

/// The words that become tokens, after dropping connectors and articles and merging "Abd".
fn words(full_name: &str) -> Vec<String> {
    let mut raw: Vec<(String, bool)> = Vec::new();
    let mut current = String::new();
    for c in normalise(full_name) {
        if c == ' ' || c == '-' {
            if !current.is_empty() {
                raw.push((std::mem::take(&mut current), c == '-'));
            }
        } else {
            current.push(c);
        }
    }
    if !current.is_empty() {
        raw.push((current, false));
    }

    let mut kept = raw.into_iter().filter_map(|(word, hyphen)| {
        let w = word.as_str();
        if CONNECTORS.contains(&w) || ARTICLES.contains(&w) || (hyphen && is_hyphen_article(w)) {
            return None;
        }
        match w.strip_prefix("ال") {
            Some(rest) if !rest.is_empty() => Some(rest.to_owned()),
            _ => Some(word),
        }
    });

    let mut out = Vec::new();
    while let Some(word) = kept.next() {
        let head = if word == ABD_AR {
            Some(ABD_AR)
        } else {
            ABD_WORDS.contains(&word.as_str()).then_some("abd")
        };
        if let Some(head) = head {
            // "Abd" alone means nothing; it names the person only together with what follows.
            out.push(format!("{head}{}", kept.next().unwrap_or_default()));
        } else if let Some(rest) = word.strip_prefix("عبدال").filter(|r| !r.is_empty()) {
            out.push(format!("{ABD_AR}{rest}"));
        } else if let Some(rest) = ABD_PREFIXES
            .iter()
            .find_map(|p| word.strip_prefix(p).filter(|r| !r.is_empty()))
        {
            out.push(format!("abd{rest}"));
        } else {
            out.push(word);
        }
    }
    out
}

/// Folds one normalised word and computes its skeleton.
fn token(word: &[char]) -> NameToken {
    let mut folded = String::new();
    let mut sounds = Vec::with_capacity(word.len());
    let mut i = 0;
    while let Some(&c) = word.get(i) {
        let initial = sounds.is_empty();
        let (sound, len) = match arabic_letter(c) {
            Some((latin, sound)) => {
                // Medial و/ي are long vowels, so they read better as u/i.
                folded.push_str(match sound {
                    Sound::Glide('w') if !initial => "u",
                    Sound::Glide(_) if !initial => "i",
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
    NameToken {
        folded,
        skeleton: skeleton(&sounds),
    }
}

fn skeleton(sounds: &[Sound]) -> String {
    let mut out = String::new();
    let mut last = None;
    for (i, sound) in sounds.iter().enumerate() {
        let c = match *sound {
            Sound::Cons(c) => c,
            Sound::Glide(c) if i == 0 => c,
            Sound::ArabicH => 'h',
            Sound::Vowel | Sound::Glide(_) => continue,
        };
        if last != Some(c) {
            out.push(c);
            last = Some(c);
        }
    }
    // A final "h" is usually ة spelled out ("Fatimah"); Arabic final ح/ه must match the Latin
    // that drops it ("Saleh"), but short names keep it so "Taha"/طه and "Allah" stay whole.
    let soft_final_h = matches!(
        sounds,
        [.., Sound::ArabicH] | [.., Sound::Vowel | Sound::Glide(_), Sound::Cons('h')]
    );
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

    fn assert_same(names: &[&str]) {
        let first = skeletons(names[0]);
        assert!(!first.is_empty(), "{} has no tokens", names[0]);
        for name in &names[1..] {
            assert_eq!(skeletons(name), first, "{name} vs {}", names[0]);
        }
    }

    #[test]
    fn single_name_variants_share_a_skeleton() {
        assert_same(&[
            "Mohammed", "Muhammad", "Mohamed", "Mohammad", "Muhammed", "محمد",
        ]);
        assert_same(&[
            "al-Hassan",
            "Al Hassan",
            "Hassan",
            "El-Hassan",
            "الحسن",
            "حسن",
        ]);
        assert_same(&["Ahmed", "Ahmad", "أحمد", "أَحْمَد"]);
        assert_same(&["Yusuf", "Youssef", "Yousef", "يوسف"]);
        assert_same(&["Hussein", "Husayn", "Hussain", "Husein", "حسين"]);
        assert_same(&["Fatima", "Fatimah", "Fatma", "فاطمة", "فاطمه"]);
        assert_same(&["Khaled", "Khalid", "خالد", "Xalid"]);
        assert_same(&["Omar", "Umar", "ʿUmar", "عمر"]);
        assert_same(&["Usama", "Osama", "Oussama", "أسامة"]);
        assert_same(&["Saleh", "Salih", "صالح"]);
        assert_same(&["Taha", "طه"]);
    }

    #[test]
    fn abd_compounds_share_a_skeleton() {
        assert_same(&[
            "Abdul Rahman",
            "Abdulrahman",
            "Abd al-Rahman",
            "Abd ar-Rahman",
            "Abd-ar-Rahman",
            "Abdelrahman",
            "Abdurrahman",
            "ʿAbd al-Raḥmān",
            "عبد الرحمن",
            "عبدالرحمن",
        ]);
        assert_same(&[
            "Abdullah",
            "Abdallah",
            "Abd Allah",
            "عبدالله",
            "عبد الله",
            "عبد اللّٰه",
        ]);
        assert_same(&["Abdulaziz", "Abdel-Aziz", "Abd al Aziz", "عبد العزيز"]);
        // عبده is a name of its own, not "Abd" + the next word.
        assert_same(&["Abdu Hassan", "Abduh Hassan", "عبده حسن"]);
        assert_ne!(skeletons("Abdu Hassan"), skeletons("عبد حسن"));
    }

    #[test]
    fn full_names_match_across_scripts() {
        assert_same(&[
            "Mohammed Abdul Rahman al-Hassan",
            "محمد عبد الرحمن الحسن",
            "Muhammad Abd al-Rahman Hassan",
        ]);
        assert_eq!(
            skeletons("محمد عبد الرحمن الحسن"),
            ["mhmd", "bdrhmn", "hsn"]
        );
        assert_same(&["Ahmed bin Khalid", "أحمد بن خالد", "Ahmad ibn Khaled"]);
        assert_same(&["Nur ad-Din", "نور الدين"]);
    }

    #[test]
    fn distinct_names_do_not_collide() {
        for (a, b) in [
            ("Ahmed", "Mahmoud"),
            ("Ali", "Omar"),
            ("Khaled", "Walid"),
            ("Hassan", "Ahmed"),
        ] {
            assert_ne!(skeletons(a), skeletons(b), "{a} vs {b}");
        }
    }

    #[test]
    fn folded_keeps_the_spelling() {
        let folded = |name: &str| {
            tokens(name)
                .into_iter()
                .map(|t| t.folded)
                .collect::<Vec<_>>()
        };
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
        for s in [
            "ـــ",
            "-al-",
            "abd",
            "عبد",
            "ال",
            "İ",
            "ǅ",
            "\u{FFFF}\u{10FFFF}",
            "ﻻ",
            "h",
            "ه",
        ] {
            let _ = tokens(s);
            let _ = script_of(s);
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

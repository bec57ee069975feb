//! Synthetic, fictional people for benchmarks and demos. Names are assembled from name-part
//! lists, each part with its Latin transliteration variants and its Arabic script form, so
//! search benchmarks exercise transliteration. Nationalities and categories follow the
//! public figures in the design notes (mostly Iraqi and Syrian, 60+ states in all; two
//! thirds children in the camps).

use concord_proto::r#type::v1 as tpb;
use concord_proto::registry::v1 as pb;
use rand::rngs::SmallRng;
use rand::Rng;

/// A name part: Latin variants first, Arabic script last.
type Part = &'static [&'static str];

const GIVEN_MALE: &[Part] = &[
    &["Mohammed", "Muhammad", "Mohamed", "محمد"],
    &["Ahmed", "Ahmad", "أحمد"],
    &["Abdul Rahman", "Abdulrahman", "Abd al-Rahman", "عبد الرحمن"],
    &["Abdullah", "Abdallah", "عبدالله"],
    &["Hussein", "Husayn", "Hussain", "حسين"],
    &["Hassan", "Hasan", "حسن"],
    &["Ali", "علي"],
    &["Omar", "Umar", "عمر"],
    &["Khaled", "Khalid", "خالد"],
    &["Yusuf", "Youssef", "Yousef", "يوسف"],
    &["Ibrahim", "Ebrahim", "إبراهيم"],
    &["Mahmoud", "Mahmud", "محمود"],
    &["Mustafa", "Mostafa", "مصطفى"],
    &["Tariq", "Tarek", "طارق"],
    &["Walid", "Waleed", "وليد"],
    &["Ziad", "Ziyad", "زياد"],
    &["Karim", "Kareem", "كريم"],
    &["Samir", "Sameer", "سمير"],
    &["Bilal", "بلال"],
    &["Hamza", "Hamzah", "حمزة"],
    &["Anas", "أنس"],
    &["Usama", "Osama", "Oussama", "أسامة"],
    &["Jamal", "Gamal", "جمال"],
    &["Saleh", "Salih", "صالح"],
    &["Faisal", "Faysal", "فيصل"],
    &["Nasser", "Nasir", "ناصر"],
    &["Rashid", "Rasheed", "رشيد"],
    &["Sami", "Samy", "سامي"],
    &["Adel", "Adil", "عادل"],
    &["Imad", "Emad", "عماد"],
];

const GIVEN_FEMALE: &[Part] = &[
    &["Fatima", "Fatimah", "فاطمة"],
    &["Aisha", "Aicha", "Ayesha", "عائشة"],
    &["Khadija", "Khadijah", "خديجة"],
    &["Maryam", "Mariam", "مريم"],
    &["Amina", "Aminah", "أمينة"],
    &["Zainab", "Zeinab", "زينب"],
    &["Hafsa", "Hafsah", "حفصة"],
    &["Asma", "Asmaa", "أسماء"],
    &["Safiya", "Safiyya", "صفية"],
    &["Huda", "Houda", "هدى"],
    &["Layla", "Leila", "Laila", "ليلى"],
    &["Nour", "Noor", "نور"],
    &["Samira", "Sameera", "سميرة"],
    &["Rania", "رانيا"],
    &["Yasmin", "Yasmine", "ياسمين"],
];

const FAMILY: &[Part] = &[
    &["al-Hassan", "Al Hassan", "Hassan", "الحسن"],
    &["al-Ahmad", "Ahmad", "الأحمد"],
    &["al-Obeidi", "al-Ubaydi", "العبيدي"],
    &["al-Jubouri", "al-Juburi", "الجبوري"],
    &["al-Dulaimi", "al-Dulaymi", "الدليمي"],
    &["al-Shammari", "Shammari", "الشمري"],
    &["al-Tikriti", "Tikriti", "التكريتي"],
    &["al-Rawi", "Rawi", "الراوي"],
    &["al-Ani", "Ani", "العاني"],
    &["al-Hamdani", "Hamdani", "الحمداني"],
    &["al-Saadi", "Saadi", "السعدي"],
    &["al-Khatib", "Khatib", "الخطيب"],
    &["Haddad", "al-Haddad", "الحداد"],
    &["Najjar", "al-Najjar", "النجار"],
    &["al-Masri", "Masri", "المصري"],
    &["al-Shami", "Shami", "الشامي"],
    &["Darwish", "Darwich", "درويش"],
    &["Mansour", "Mansur", "منصور"],
    &["Kassem", "Qasim", "Kasim", "قاسم"],
    &["Suleiman", "Sulayman", "سليمان"],
    &["al-Bakri", "Bakri", "البكري"],
    &["al-Zubaidi", "Zubaidi", "الزبيدي"],
    &["al-Kurdi", "Kurdi", "الكردي"],
    &["Othman", "Uthman", "عثمان"],
    &["al-Halabi", "Halabi", "الحلبي"],
    &["al-Homsi", "Homsi", "الحمصي"],
    &["al-Idlibi", "Idlibi", "الإدلبي"],
    &["Abbas", "عباس"],
    &["Hammoud", "Hamoud", "حمود"],
    &["al-Faris", "Fares", "الفارس"],
];

const STATES: &[&str] = &[
    "FR", "DE", "BE", "NL", "GB", "SE", "DK", "NO", "FI", "AT", "CH", "IT", "ES", "PT", "IE", "US",
    "CA", "AU", "RU", "KZ", "UZ", "KG", "TJ", "TM", "AZ", "GE", "TR", "TN", "MA", "DZ", "LY", "EG",
    "SA", "JO", "LB", "YE", "SD", "SO", "PK", "AF", "IN", "BD", "ID", "MY", "PH", "CN", "XK", "AL",
    "BA", "MK", "RS", "ME", "UA", "TT", "SN", "ML", "NG", "KE", "IR", "KW",
];

fn pick<'a>(rng: &mut SmallRng, xs: &'a [&'a str]) -> &'a str {
    xs[rng.gen_range(0..xs.len())]
}

/// The parts of a name, as commonly recorded in Iraq and Syria: given name, father's name,
/// grandfather's name, family or tribal name.
pub fn name_parts(rng: &mut SmallRng, female: bool) -> [Part; 4] {
    let given = if female { GIVEN_FEMALE } else { GIVEN_MALE };
    [
        given[rng.gen_range(0..given.len())],
        GIVEN_MALE[rng.gen_range(0..GIVEN_MALE.len())],
        GIVEN_MALE[rng.gen_range(0..GIVEN_MALE.len())],
        FAMILY[rng.gen_range(0..FAMILY.len())],
    ]
}

/// The name in Arabic script, or in Latin with each part's spelling drawn at random.
pub fn render(rng: &mut SmallRng, parts: &[Part; 4], arabic: bool) -> String {
    let words: Vec<&str> = parts
        .iter()
        .map(|p| if arabic { p[p.len() - 1] } else { pick(rng, &p[..p.len() - 1]) })
        .collect();
    words.join(" ")
}

/// A one-word search query: a given name in any variant or script.
pub fn one_word_query(rng: &mut SmallRng) -> String {
    let g = GIVEN_MALE[rng.gen_range(0..GIVEN_MALE.len())];
    if rng.gen_bool(0.3) {
        g[g.len() - 1].to_string()
    } else {
        pick(rng, &g[..g.len() - 1]).to_string()
    }
}

/// A search query: a given name and a family name, in any variant or script.
pub fn query(rng: &mut SmallRng) -> String {
    let arabic = rng.gen_bool(0.3);
    let g = GIVEN_MALE[rng.gen_range(0..GIVEN_MALE.len())];
    let f = FAMILY[rng.gen_range(0..FAMILY.len())];
    let w = |p: Part, rng: &mut SmallRng| {
        if arabic {
            p[p.len() - 1]
        } else {
            pick(rng, &p[..p.len() - 1])
        }
    };
    format!("{} {}", w(g, rng), w(f, rng))
}

/// One fictional person.
pub fn person(rng: &mut SmallRng) -> pb::Person {
    let child = rng.gen_bool(0.55);
    let female = rng.gen_bool(if child { 0.5 } else { 0.45 });
    let category = match (child, female) {
        (true, _) if rng.gen_bool(0.06) => pb::PersonCategory::UnaccompaniedChild,
        (true, _) => pb::PersonCategory::Child,
        (false, true) => pb::PersonCategory::AdultFemale,
        (false, false) => pb::PersonCategory::AdultMale,
    };
    let year = if child { rng.gen_range(2006..2020) } else { rng.gen_range(1960..2004) };
    let state = match rng.gen_range(0..100) {
        0..=39 => "IQ",
        40..=74 => "SY",
        _ => STATES[rng.gen_range(0..STATES.len())],
    };
    let parts = name_parts(rng, female);
    let mut names =
        vec![pb::PersonName { full_name: render(rng, &parts, true), ..Default::default() }];
    names.push(pb::PersonName {
        full_name: render(rng, &parts, false),
        kind: pb::NameKind::Transliteration as i32,
        ..Default::default()
    });
    pb::Person {
        names,
        sex: if female { pb::Sex::Female as i32 } else { pb::Sex::Male as i32 },
        category: category as i32,
        birth_date: Some(tpb::ApproximateDate {
            year,
            precision: tpb::DatePrecision::Year as i32,
            ..Default::default()
        }),
        nationalities: vec![pb::Nationality {
            state: state.into(),
            basis: pb::NationalityBasis::Claimed as i32,
            ..Default::default()
        }],
        ..Default::default()
    }
}

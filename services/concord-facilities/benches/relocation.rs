//! Emergency relocation planner: speed, and quality against the exact bound, on a realistic
//! instance: a compromised camp in northeast Syria (al-Hol) holding mostly mothers with
//! children, some fathers and single adults, unaccompanied minors and a few records without
//! sex, emptied into 25 facilities within about 300 km with room for somewhat more people
//! than it holds, but not for every adolescent or adult man. Then the same people with no
//! households, where the plan must equal the bound.
//!
//! Last, the first instance through the service: `PlanRelocation` over gRPC, with the people
//! in the occupancy projection of a real database, the plan stored as PLANNED movements.
//!
//! `cargo bench -p concord-facilities --bench relocation [-- PEOPLE]` (default 10,000).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use concord_facilities::domain::{AgeBand, FacilityKind, PlaceSex, SeparationRules};
use concord_facilities::relocation::{
    bound_without_households, plan, Bound, Candidate, Free, Plan, Site,
};

/// al-Hol camp.
const ORIGIN: (f64, f64) = (36.374, 41.148);

/// splitmix64: small, deterministic, good enough for instances.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// The band of someone of `age` (a child when `child` and the age is unknown).
fn band(age: Option<i32>, child: bool) -> AgeBand {
    match age {
        Some(a) if a < 12 => AgeBand::Child,
        Some(a) if a < 18 => AgeBand::Adolescent,
        Some(_) => AgeBand::Adult,
        None if child => AgeBand::Child,
        None => AgeBand::Adult,
    }
}

/// Someone of an age drawn from `ages` (3% unknown).
fn person(
    rng: &mut Rng,
    id: usize,
    sex: Option<PlaceSex>,
    ages: (i32, i32),
    household: &str,
) -> Candidate {
    let age = if rng.chance(0.03) {
        None
    } else {
        Some(ages.0 + rng.below((ages.1 - ages.0 + 1) as u64) as i32)
    };
    Candidate {
        person_id: format!("p{id:06}"),
        sex,
        age,
        band: band(age, ages.1 < 18),
        household: household.to_string(),
    }
}

/// `n` people held at the camp: mostly mothers with children, some fathers and single
/// adults, unaccompanied minors, and a few records without sex. With `households` false,
/// nobody is recorded in a household.
fn people(n: usize, seed: u64, households: bool) -> Vec<Candidate> {
    let mut rng = Rng(seed);
    let mut out = Vec::with_capacity(n);
    let mut h = 0;
    let sex = |rng: &mut Rng| {
        if rng.chance(0.5) {
            Some(PlaceSex::Male)
        } else {
            Some(PlaceSex::Female)
        }
    };
    while out.len() < n {
        let roll = rng.unit();
        let id = out.len();
        if roll < 0.62 {
            // A mother with 1 to 5 children, sometimes a father.
            h += 1;
            let hh = if households { format!("h{h:05}") } else { String::new() };
            out.push(person(&mut rng, id, Some(PlaceSex::Female), (18, 50), &hh));
            if rng.chance(0.08) {
                let id = out.len();
                out.push(person(&mut rng, id, Some(PlaceSex::Male), (20, 60), &hh));
            }
            for _ in 0..1 + rng.below(5) {
                let id = out.len();
                let s = sex(&mut rng);
                out.push(person(&mut rng, id, s, (0, 17), &hh));
            }
        } else if roll < 0.80 {
            out.push(person(&mut rng, id, Some(PlaceSex::Male), (18, 65), ""));
        } else if roll < 0.92 {
            out.push(person(&mut rng, id, Some(PlaceSex::Female), (18, 70), ""));
        } else if roll < 0.99 {
            let s = sex(&mut rng);
            out.push(person(&mut rng, id, s, (8, 17), ""));
        } else {
            out.push(person(&mut rng, id, None, (0, 60), ""));
        }
    }
    out.truncate(n);
    out
}

/// The 25 destinations: (id, kind, latitude, longitude).
const SITES: &[(&str, FacilityKind, f64, f64)] = &[
    ("roj", FacilityKind::Camp, 36.95, 42.05),
    ("areesha", FacilityKind::Camp, 36.22, 40.60),
    ("washokani", FacilityKind::Camp, 36.43, 40.63),
    ("newroz", FacilityKind::Camp, 37.03, 42.28),
    ("mahmoudli", FacilityKind::Camp, 35.92, 38.86),
    ("abu-khashab", FacilityKind::Camp, 35.77, 40.07),
    ("serekaniye", FacilityKind::Camp, 36.45, 40.68),
    ("tal-samin", FacilityKind::Camp, 36.07, 38.98),
    ("roj-annex", FacilityKind::CampAnnex, 36.97, 42.08),
    ("areesha-annex", FacilityKind::CampAnnex, 36.24, 40.62),
    ("newroz-annex", FacilityKind::CampAnnex, 37.04, 42.30),
    ("hol-annex-south", FacilityKind::CampAnnex, 36.30, 41.10),
    ("ghwayran", FacilityKind::Prison, 36.48, 40.74),
    ("derik", FacilityKind::Prison, 37.07, 42.18),
    ("qamishli", FacilityKind::Prison, 37.05, 41.22),
    ("raqqa", FacilityKind::Prison, 35.95, 39.01),
    ("tabqa", FacilityKind::Prison, 35.83, 38.55),
    ("shaddadi", FacilityKind::Prison, 36.05, 40.73),
    ("houri", FacilityKind::RehabilitationCentre, 37.00, 41.10),
    ("halat", FacilityKind::RehabilitationCentre, 36.88, 42.00),
    ("kobani-rehab", FacilityKind::RehabilitationCentre, 36.89, 38.35),
    ("hasakah-hospital", FacilityKind::Hospital, 36.50, 40.75),
    ("qamishli-hospital", FacilityKind::Hospital, 37.05, 41.23),
    ("raqqa-hospital", FacilityKind::Hospital, 35.95, 39.02),
    ("derik-hospital", FacilityKind::Hospital, 37.07, 42.19),
];

/// Share of each kind of place held by each kind of facility.
fn share(kind: FacilityKind, sex: PlaceSex, band: AgeBand) -> f64 {
    use AgeBand::*;
    use FacilityKind::*;
    use PlaceSex::*;
    match (kind, sex, band) {
        (Prison, Male, Adult) => 0.88,
        (Hospital, Male, Adult) => 0.12,
        (_, Male, Adult) => 0.0,
        (RehabilitationCentre, Male, Adolescent) => 0.55,
        (Camp, Male, Adolescent) => 0.30,
        (CampAnnex, Male, Adolescent) => 0.10,
        (Hospital, Male, Adolescent) => 0.05,
        (Prison, Female, Adult) => 0.05,
        (Prison | RehabilitationCentre, _, _) => 0.0,
        (Camp, _, _) => 0.70,
        (CampAnnex, _, _) => 0.22,
        (Hospital, _, _) => 0.03,
    }
}

/// Places for each kind of place per person needing one.
fn room(class: (PlaceSex, AgeBand)) -> f64 {
    match class {
        (PlaceSex::Male, AgeBand::Adult) => 0.93,
        (PlaceSex::Male, AgeBand::Adolescent) => 0.97,
        (PlaceSex::Female, AgeBand::Adolescent) => 1.04,
        _ => 1.12,
    }
}

/// Sites with free places for about `room` times the people of each kind of place, spread
/// over sections at random.
fn sites(people: &[Candidate], seed: u64) -> Vec<Site> {
    let mut rng = Rng(seed);
    let mut demand: BTreeMap<(PlaceSex, AgeBand), f64> = BTreeMap::new();
    for p in people {
        if let Some(sex) = p.sex {
            *demand.entry((sex, p.band)).or_default() += 1.0;
        }
    }
    let weights: Vec<f64> = SITES.iter().map(|_| 0.5 + rng.unit()).collect();
    let mut out: Vec<Site> = SITES
        .iter()
        .map(|&(id, kind, latitude, longitude)| Site {
            facility_id: id.to_string(),
            kind,
            latitude,
            longitude,
            free: Vec::new(),
        })
        .collect();
    for (&(sex, band), &need) in &demand {
        let places = need * room((sex, band));
        for kind in [
            FacilityKind::Prison,
            FacilityKind::Camp,
            FacilityKind::CampAnnex,
            FacilityKind::Hospital,
            FacilityKind::RehabilitationCentre,
        ] {
            let total: f64 =
                SITES.iter().zip(&weights).filter(|(s, _)| s.1 == kind).map(|(_, w)| w).sum();
            for (i, site) in out.iter_mut().enumerate() {
                if site.kind != kind || total == 0.0 {
                    continue;
                }
                let mine = (places * share(kind, sex, band) * weights[i] / total).round() as i64;
                let sections = 1 + rng.below(4);
                let mut left = mine;
                for k in 0..sections {
                    let n = if k + 1 == sections {
                        left
                    } else {
                        (left as f64 * rng.unit()).round() as i64
                    };
                    left -= n;
                    if n > 0 {
                        site.free.push(Free { section_id: format!("s{k}"), sex, band, places: n });
                    }
                }
            }
        }
    }
    out
}

/// Runs `f` 3 times to warm up, then `runs` times: the last plan, median and max time.
fn time(runs: usize, f: impl Fn() -> Plan) -> (Plan, Duration, Duration) {
    let mut out = f();
    for _ in 0..3 {
        out = f();
    }
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            out = f();
            t.elapsed()
        })
        .collect();
    times.sort();
    (out, times[runs / 2], times[runs - 1])
}

/// Milliseconds.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Plans for `people`, times it, and prints the table.
fn report(title: &str, people: &[Candidate], sites: &[Site]) {
    let rules = SeparationRules::default();
    let (p, median, max) = time(20, || plan(ORIGIN, people, sites, &rules));
    let t = Instant::now();
    let b: Bound = bound_without_households(ORIGIN, people, sites, &rules);
    let bound_time = t.elapsed();
    let placed = p.assignments.len();
    let distance = p.total_distance_km();
    let households: BTreeMap<&str, usize> =
        people.iter().filter(|c| !c.household.is_empty()).fold(BTreeMap::new(), |mut m, c| {
            *m.entry(c.household.as_str()).or_default() += 1;
            m
        });
    let places: i64 = sites.iter().flat_map(|s| &s.free).map(|f| f.places).sum();
    println!("== {title}");
    println!("{:<34}{:>14}", "people", people.len());
    println!("{:<34}{:>14}", "sites", sites.len());
    println!("{:<34}{:>14}", "free places", places);
    println!("{:<34}{:>14.2}", "plan median ms (20 runs)", ms(median));
    println!("{:<34}{:>14.2}", "plan max ms", ms(max));
    println!("{:<34}{:>14.2}", "bound ms", ms(bound_time));
    println!("{:<34}{:>14}", "placed", placed);
    println!("{:<34}{:>14}", "bound placed", b.placed);
    println!(
        "{:<34}{:>14.6}",
        "placed / bound",
        if b.placed == 0 { 1.0 } else { placed as f64 / b.placed as f64 }
    );
    println!("{:<34}{:>14.1}", "total distance km", distance);
    println!("{:<34}{:>14.1}", "bound distance km", b.distance_km);
    println!("{:<34}{:>14.6}", "distance / bound", distance / b.distance_km.max(f64::MIN_POSITIVE));
    println!("{:<34}{:>14}", "households", households.len());
    println!(
        "{:<34}{:>14}",
        "  with 2+ a camp or annex takes",
        p.kept_households.len() + p.split_households.len()
    );
    println!("{:<34}{:>14}", "  kept together", p.kept_households.len());
    println!("{:<34}{:>14}", "  split", p.split_households.len());
    let mut reasons: BTreeMap<&str, usize> = BTreeMap::new();
    for u in &p.unplaced {
        *reasons.entry(u.reason.as_str()).or_default() += 1;
    }
    println!("{:<34}{:>14}", "unplaced", p.unplaced.len());
    for (r, n) in reasons {
        println!("  {n:>6}  {r}");
    }
    println!();
}

/// `[PEOPLE]`: both scenarios, then the first through the service.
fn main() {
    let n = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000usize);
    let with = people(n, 0x5eed, true);
    let sites_with = sites(&with, 0xfac);
    report("households (mothers with children, some fathers)", &with, &sites_with);
    let without = people(n, 0x5eed, false);
    let sites_without = sites(&without, 0xfac);
    report("no households (plan should equal the bound)", &without, &sites_without);
    stored(&with, &sites_with);
}

/// The same plan through the service: `PlanRelocation` on a server over a real database (the
/// testkit's: SQLite, or PostgreSQL with `CONCORD_TEST_BACKEND=postgres`), with the people
/// in its occupancy projection; the plan is stored as PLANNED movements in one transaction.
fn stored(people: &[Candidate], sites: &[Site]) {
    use concord_platform::policy::Policy;
    use concord_platform::server::{Services, Shutdown};
    use concord_proto::facilities::v1 as pb;
    use concord_proto::facilities::v1::facilities_service_client::FacilitiesServiceClient;
    use concord_proto::registry::v1 as reg;
    use prost::Message;

    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => return println!("stored plan: no runtime: {e}"),
    };
    let result: anyhow::Result<()> = rt.block_on(async {
        let t = concord_testkit::database().await?;
        let (trigger, shutdown) = Shutdown::new();
        let cfg = concord_testkit::server_config();
        let (svc, db) = concord_facilities::build(
            &t.url,
            std::sync::Arc::new(Policy::embedded()),
            SeparationRules::default(),
            &cfg,
            None,
            shutdown.clone(),
        )
        .await?;
        let server =
            concord_testkit::TestServer::start(Services::new().with(svc), trigger, shutdown, cfg)
                .await?;
        let channel = tonic::transport::Channel::from_shared(server.uri())?.connect().await?;
        let mut c = FacilitiesServiceClient::with_interceptor(
            channel,
            concord_testkit::caller(concord_testkit::coordinator()),
        )
        .max_decoding_message_size(64 << 20);
        let facility = |id: &str, kind: FacilityKind, at: (f64, f64), free: &[Free]| {
            let mut sections: BTreeMap<String, Vec<pb::Capacity>> = BTreeMap::new();
            for f in free {
                sections.entry(f.section_id.clone()).or_default().push(pb::Capacity {
                    sex: pb::PlaceSex::from_str_name(&f.sex.proto_name()).map_or(0, |s| s as i32),
                    age_band: pb::AgeBand::from_str_name(&f.band.proto_name())
                        .map_or(0, |b| b as i32),
                    places: i32::try_from(f.places).unwrap_or(i32::MAX),
                });
            }
            pb::CreateFacilityRequest {
                facility_id: id.into(),
                facility: Some(pb::Facility {
                    display_name: id.into(),
                    kind: pb::FacilityKind::from_str_name(&kind.proto_name())
                        .map_or(0, |k| k as i32),
                    location: Some(pb::Location {
                        latitude: at.0,
                        longitude: at.1,
                        region: String::new(),
                    }),
                    sections: sections
                        .into_iter()
                        .map(|(section_id, capacities)| pb::Section {
                            display_name: section_id.clone(),
                            section_id,
                            capacities,
                        })
                        .collect(),
                    ..Default::default()
                }),
                custodian_agency: "custodial-authority".into(),
                request_id: String::new(),
            }
        };
        let mut camp = Vec::new();
        for sex in PlaceSex::ALL {
            for band in AgeBand::ALL {
                let places = people.len() as i64;
                camp.push(Free { section_id: "main".into(), sex: *sex, band: *band, places });
            }
        }
        c.create_facility(facility("al-hol", FacilityKind::Camp, ORIGIN, &camp)).await?;
        for s in sites {
            c.create_facility(facility(&s.facility_id, s.kind, (s.latitude, s.longitude), &s.free))
                .await?;
        }
        let year = concord_platform::time::current_year();
        let events: Vec<_> = people
            .iter()
            .map(|p| {
                let person = reg::Person {
                    name: format!("persons/{}", p.person_id),
                    sex: match p.sex {
                        Some(PlaceSex::Male) => reg::Sex::Male as i32,
                        Some(PlaceSex::Female) => reg::Sex::Female as i32,
                        None => 0,
                    },
                    birth_date: p.age.map(|a| concord_proto::r#type::v1::ApproximateDate {
                        year: year - a,
                        ..Default::default()
                    }),
                    category: if p.band == AgeBand::Child {
                        reg::PersonCategory::Child as i32
                    } else {
                        0
                    },
                    custody_status: reg::CustodyStatus::InCustody as i32,
                    facility_id: "al-hol".into(),
                    household: if p.household.is_empty() {
                        String::new()
                    } else {
                        format!("households/{}", p.household)
                    },
                    etag: "\"1\"".into(),
                    ..Default::default()
                };
                concord_proto::r#type::v1::ChangeEvent {
                    cursor: "1".into(),
                    event_type: "person.custody_changed".into(),
                    resource_name: person.name.clone(),
                    resource: Some(prost_types::Any {
                        type_url: "type.googleapis.com/concord.registry.v1.Person".into(),
                        value: person.encode_to_vec(),
                    }),
                    ..Default::default()
                }
            })
            .collect();
        for chunk in events.chunks(1000) {
            concord_facilities::occupancy::apply(&db, chunk).await?;
        }
        for to in ["ELEVATED", "HIGH", "LOCKDOWN", "COMPROMISED"] {
            c.change_security_status(pb::ChangeSecurityStatusRequest {
                name: "facilities/al-hol".into(),
                status: pb::SecurityStatus::from_str_name(&format!("SECURITY_STATUS_{to}"))
                    .map_or(0, |s| s as i32),
                reason: "attack on the camp".into(),
                reporter: "camp security".into(),
                ..Default::default()
            })
            .await?;
        }
        let start = Instant::now();
        let plan = c
            .plan_relocation(pb::PlanRelocationRequest {
                name: "facilities/al-hol".into(),
                request_id: String::new(),
            })
            .await?
            .into_inner();
        let took = start.elapsed();
        let backend = if t.url.starts_with("postgres") { "PostgreSQL" } else { "SQLite" };
        println!("== stored plan: PlanRelocation over gRPC, {backend}");
        println!("{:<34}{:>14}", "people", people.len());
        println!("{:<34}{:>14.1}", "call ms (plan + store)", ms(took));
        println!("{:<34}{:>14}", "placed", plan.placed_count);
        println!("{:<34}{:>14}", "movements (PLANNED)", plan.movements.len());
        println!("{:<34}{:>14}", "unplaced", plan.unplaced.len());
        println!("{:<34}{:>14}", "households split", plan.split_households.len());
        println!("{:<34}{:>14.1}", "total distance km", plan.total_distance_km);
        server.stop().await?;
        Ok(())
    });
    if let Err(e) = result {
        eprintln!("stored plan failed: {e:#}");
        std::process::exit(1);
    }
}

//! Property: for random datasets and random scopes, get, list, search and watch return
//! exactly the people the scope admits (`Scope::admits` is the oracle) and nothing else; the
//! SQL of every query, the watch tags and the cache agree with it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use concord_platform::access::{Access, Shared};
use concord_platform::auth::{AgencyKind, Principal, Scope, Subject, Visible};
use concord_platform::outbox::{self, WatchParams, WatchTuning};
use concord_platform::policy::Grant;
use concord_platform::server::Shutdown;
use concord_platform::storage::{Db, DbOptions};
use concord_proto::registry::v1 as pb;
use concord_registry::domain::{Transition, TransitionRequest};
use concord_registry::grpc::convert;
use concord_registry::store::{NewPerson, Store, MIGRATIONS};
use futures::StreamExt;
use proptest::prelude::*;

const STATES: &[&str] = &["FR", "NL", "DE", "IQ"];
const FACILITIES: &[&str] = &["al-hol", "roj", "panorama_1"];
const CATEGORIES: &[(pb::PersonCategory, &str)] = &[
    (pb::PersonCategory::AdultMale, "ADULT_MALE"),
    (pb::PersonCategory::AdultFemale, "ADULT_FEMALE"),
    (pb::PersonCategory::Child, "CHILD"),
];

#[derive(Debug, Clone)]
struct Row {
    states: Vec<usize>,
    facility: Option<usize>,
    category: usize,
}

#[derive(Debug, Clone)]
struct RandomScope {
    states: Vec<usize>,
    facilities: Vec<usize>,
    persons: Vec<usize>,
    shared: Vec<(usize, usize)>,
    categories: Vec<(usize, usize)>,
}

fn row() -> impl Strategy<Value = Row> {
    (
        proptest::sample::subsequence((0..STATES.len()).collect::<Vec<_>>(), 1..=2),
        proptest::option::of(0..FACILITIES.len()),
        0..CATEGORIES.len(),
    )
        .prop_map(|(states, facility, category)| Row { states, facility, category })
}

fn scope() -> impl Strategy<Value = RandomScope> {
    (
        proptest::sample::subsequence((0..STATES.len()).collect::<Vec<_>>(), 0..=2),
        proptest::sample::subsequence((0..FACILITIES.len()).collect::<Vec<_>>(), 0..=1),
        proptest::collection::vec(0..12usize, 0..3),
        proptest::collection::vec((0..STATES.len(), 0..12usize), 0..3),
        proptest::collection::vec((0..STATES.len(), 0..CATEGORIES.len()), 0..2),
    )
        .prop_map(|(states, facilities, persons, shared, categories)| RandomScope {
            states,
            facilities,
            persons,
            shared,
            categories,
        })
}

fn writer() -> Access {
    let p = Principal {
        agency: "coalition-cell".into(),
        state: None,
        kind: AgencyKind::Coordinator,
        roles: vec![],
        facilities: vec![],
        via: None,
    };
    Access::resolve(p, Grant::unrestricted(), Shared::default(), "property test".into(), "Test")
}

fn person(r: &Row) -> pb::Person {
    pb::Person {
        names: vec![pb::PersonName {
            full_name: "Amina Haddad".into(),
            kind: pb::NameKind::Primary as i32,
            script: "Latn".into(),
        }],
        sex: pb::Sex::Female as i32,
        nationalities: r
            .states
            .iter()
            .map(|s| pb::Nationality {
                state: STATES[*s].into(),
                basis: pb::NationalityBasis::Claimed as i32,
                ..Default::default()
            })
            .collect(),
        category: CATEGORIES[r.category].0 as i32,
        identity_confidence: pb::IdentityConfidence::Low as i32,
        ..Default::default()
    }
}

async fn check(rows: Vec<Row>, scopes: Vec<RandomScope>) {
    let t = concord_testkit::database().await.unwrap();
    let db = Db::connect(&t.url, MIGRATIONS, DbOptions::default()).await.unwrap();
    let store = Store::new(db.clone());
    let w = writer();
    let new: Vec<NewPerson> = rows
        .iter()
        .map(|r| NewPerson {
            data: convert::person_data(&person(r), "person").unwrap(),
            request_id: None,
        })
        .collect();
    let outcomes = store.insert_persons(&w, new, "Test").await.unwrap();
    let ids: Vec<String> = outcomes
        .into_iter()
        .map(|o| match o {
            concord_registry::store::InsertOutcome::Created(p) => p.id.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // Events in log order, each with the facility the person had when it was written.
    let mut events: Vec<(usize, Option<usize>)> = (0..rows.len()).map(|i| (i, None)).collect();
    for (i, r) in rows.iter().enumerate() {
        if let Some(f) = r.facility {
            store
                .transition(
                    &w,
                    TransitionRequest {
                        transition: Transition::Admit,
                        person_id: ids[i].clone(),
                        facility_id: FACILITIES[f].into(),
                        section_id: String::new(),
                        reference: String::new(),
                        receiving_state: String::new(),
                        disposition: None,
                        reason: "intake".into(),
                        source: "test".into(),
                        occur_time: 1,
                        expected_version: None,
                        request_id: None,
                    },
                )
                .await
                .unwrap();
            events.push((i, Some(f)));
        }
    }
    let states_of = |i: usize| -> Vec<String> {
        rows[i].states.iter().map(|s| STATES[*s].to_string()).collect()
    };
    for rs in scopes {
        let scope = Scope::Only(Visible {
            states: rs.states.iter().map(|s| STATES[*s].to_string()).collect(),
            facilities: rs.facilities.iter().map(|f| FACILITIES[*f].to_string()).collect(),
            persons: rs.persons.iter().filter_map(|i| ids.get(*i).cloned()).collect(),
            shared: rs
                .shared
                .iter()
                .filter_map(|(s, i)| ids.get(*i).map(|id| (STATES[*s].to_string(), id.clone())))
                .collect(),
            categories: rs
                .categories
                .iter()
                .map(|(s, c)| (STATES[*s].to_string(), CATEGORIES[*c].1.to_string()))
                .collect(),
        });
        let admitted = |i: usize, facility: Option<usize>| {
            let states = states_of(i);
            scope.admits(&Subject {
                id: &ids[i],
                states: &states,
                facility: facility.map_or("", |f| FACILITIES[f]),
                category: CATEGORIES[rows[i].category].1,
            })
        };
        let expected: BTreeSet<String> = (0..rows.len())
            .filter(|i| admitted(*i, rows[*i].facility))
            .map(|i| ids[i].clone())
            .collect();

        let listed: BTreeSet<String> = store
            .list_persons(&scope, None, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(listed, expected, "list in {scope:?}");

        let tokens = concord_registry::search_keys::tokens("Amina Haddad");
        let found: BTreeSet<String> = store
            .search(&scope, &tokens, None, None, 1000)
            .await
            .unwrap()
            .into_iter()
            .map(|h| h.person.id)
            .collect();
        assert_eq!(found, expected, "search in {scope:?}");

        for id in &ids {
            let got = store.get_person(&scope, id).await;
            assert_eq!(got.is_ok(), expected.contains(id), "get {id} in {scope:?}");
        }

        let expected_events: Vec<String> = events
            .iter()
            .filter(|(i, f)| admitted(*i, *f))
            .map(|(i, _)| format!("persons/{}", ids[*i]))
            .collect();
        let params =
            WatchParams { cursor: String::new(), start_at_end: false, event_types: vec![], scope };
        let tuning = WatchTuning {
            batch: 100,
            poll_interval: Duration::from_millis(10),
            bookmark_interval: Duration::from_millis(30),
        };
        let (_trigger, shutdown) = Shutdown::new();
        let mut stream =
            Box::pin(outbox::watch(db.clone(), params, tuning, shutdown).await.unwrap());
        let mut watched = Vec::new();
        let mut bookmarks = 0;
        while bookmarks < 2 {
            let e = stream.next().await.unwrap().unwrap();
            if e.bookmark {
                bookmarks += 1;
            } else {
                watched.push(e.resource_name);
            }
        }
        assert_eq!(watched, expected_events, "watch");
    }
    db.close().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn nothing_outside_the_scope_is_returned_by_get_list_search_or_watch(
        rows in proptest::collection::vec(row(), 1..12),
        scopes in proptest::collection::vec(scope(), 1..4),
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(check(rows, scopes));
    }
}

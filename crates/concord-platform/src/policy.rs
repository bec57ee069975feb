//! Declarative authorization: which actions a caller may take, whose records it may see and
//! which classes of fields it may read, decided by permit rules loaded from configuration
//! (`policy/default.toml` is the embedded default) and checked against the schema below.
//!
//! The policy decides per caller, not per object: it yields a [`Grant`], and every service
//! applies the grant to every object it returns: [`Grant::visibility`] goes into the SQL of
//! every query (so paging and counts never see hidden records), and [`FieldSet`] says which
//! fields to redact. Nothing is allowed that no rule permits.

use std::collections::BTreeSet;

use serde::Deserialize;

use crate::auth::{AgencyKind, Principal};
use crate::error::{Error, Result};

/// The default policy, compiled in.
pub const DEFAULT_POLICY: &str = include_str!("../policy/default.toml");

macro_rules! catalogue {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $v),+ }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$v),+];
            /// The name used in policies and audit records.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$v => $s),+ }
            }
            /// Parses a policy name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$v),)+ _ => None }
            }
            fn bit(self) -> u32 { 1 << (self as u32) }
        }
    };
}

catalogue!(
    /// What a caller does. Every RPC of every service maps to exactly one action.
    Action {
        /// Get, list and search people.
        PersonsRead = "persons.read",
        /// Create people.
        PersonsCreate = "persons.create",
        /// Update people.
        PersonsUpdate = "persons.update",
        /// Bulk import.
        PersonsImport = "persons.import",
        /// Read custody timelines.
        CustodyRead = "custody.read",
        /// Record custody transitions.
        CustodyRecord = "custody.record",
        /// Review duplicate candidates (list, reject, merge, unmerge).
        DuplicatesReview = "duplicates.review",
        /// Read relationships, households, documents, verifications, consents.
        RecordsRead = "records.read",
        /// Write them.
        RecordsWrite = "records.write",
        /// Stream changes.
        ChangesWatch = "changes.watch",
        /// Create, list and revoke the caller's state's sharing agreements.
        SharingManage = "sharing.manage",
        /// Open a person's record in an emergency, with a reason, audited.
        BreakGlass = "break_glass",
        /// Read facilities, their sections, status and timeline (not personal data).
        FacilitiesRead = "facilities.read",
        /// Create facilities and change their sections and capacity.
        FacilitiesManage = "facilities.manage",
        /// Change a facility's security status.
        FacilitiesSecurity = "facilities.security",
        /// Pass a facility to another custodian.
        FacilitiesCustodian = "facilities.custodian",
        /// Read and make movements, headcounts and relocation plans, which name people (at the
        /// facilities the caller runs, or any with facilities.custodian).
        FacilitiesPeople = "facilities.people",
        /// Read diplomatic requests the caller is a party to.
        RequestsRead = "requests.read",
        /// Make and move diplomatic requests, in the caller's role in each.
        RequestsWrite = "requests.write",
    }
);

catalogue!(
    /// Classes of fields. A field of a class the caller may not read is redacted.
    FieldClass {
        /// Names, sex, birth date, nationalities, category, confidence, legal status,
        /// relationships and households.
        Identity = "identity",
        /// Custody status, facility, section, destination, disposition, the timeline.
        Custody = "custody",
        /// Consent and welfare records.
        Welfare = "welfare",
        /// Identity documents and verifications.
        Documents = "documents",
        /// Biometric references.
        Biometrics = "biometrics",
        /// Evidence.
        Evidence = "evidence",
    }
);

catalogue!(
    /// Whose records a rule lets the caller see.
    Basis {
        /// Everyone.
        All = "all",
        /// People holding the caller's state's nationality.
        Nationals = "nationals",
        /// People in the caller's facilities.
        Facilities = "facilities",
        /// People shared with the caller's state by sharing agreements.
        Shared = "shared",
    }
);

/// A set of field classes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FieldSet(u32);

impl FieldSet {
    /// Every class.
    pub fn all() -> Self {
        FieldSet(FieldClass::ALL.iter().map(|c| c.bit()).fold(0, |a, b| a | b))
    }
    /// True if `class` may be read.
    pub fn contains(self, class: FieldClass) -> bool {
        self.0 & class.bit() != 0
    }
    /// Adds a class.
    pub fn insert(&mut self, class: FieldClass) {
        self.0 |= class.bit();
    }
    /// The classes, comma separated, for audit records.
    pub fn names(self) -> String {
        FieldClass::ALL
            .iter()
            .filter(|c| self.contains(**c))
            .map(|c| c.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// What the policy grants one caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Grant {
    actions: u32,
    /// Readable field classes.
    pub fields: FieldSet,
    bases: u32,
}

impl Grant {
    /// Everything, everywhere: only for benchmarks that measure what authorization costs.
    pub fn unrestricted() -> Self {
        Grant {
            actions: Action::ALL.iter().fold(0, |a, x| a | x.bit()),
            fields: FieldSet::all(),
            bases: Basis::All.bit(),
        }
    }

    /// True if `action` is permitted.
    pub fn allows(&self, action: Action) -> bool {
        self.actions & action.bit() != 0
    }
    /// PERMISSION_DENIED naming the action unless it is permitted. Checked before any
    /// object is looked up, so it reveals nothing about objects.
    pub fn require(&self, action: Action) -> Result<()> {
        if self.allows(action) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "the policy does not permit '{}' to this caller",
                action.as_str()
            )))
        }
    }
    /// True if the caller sees records on `basis`.
    pub fn sees(&self, basis: Basis) -> bool {
        self.bases & basis.bit() != 0
    }
    /// PERMISSION_DENIED naming the class unless its fields may be read (and so written).
    pub fn require_field(&self, class: FieldClass, field: &str) -> Result<()> {
        if self.fields.contains(class) {
            Ok(())
        } else {
            Err(Error::PermissionDenied(format!(
                "{field} is {} data, which this caller may not read or write",
                class.as_str()
            )))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default, rename = "rule")]
    rules: Vec<RuleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    description: String,
    kinds: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    see: Vec<String>,
    #[serde(default)]
    fields: Vec<String>,
    #[serde(default)]
    actions: Vec<String>,
}

#[derive(Debug, Clone)]
struct Rule {
    kinds: Vec<AgencyKind>,
    roles: BTreeSet<String>,
    grant: Grant,
}

/// A loaded, schema-checked policy.
#[derive(Debug, Clone)]
pub struct Policy {
    rules: Vec<Rule>,
}

impl Policy {
    /// The embedded default.
    pub fn embedded() -> Self {
        // The default is checked by a unit test; failing here would be a build defect.
        Self::from_toml(DEFAULT_POLICY).unwrap_or_else(|e| panic!("embedded policy: {e}"))
    }

    /// Parses and checks a policy. The error names every unknown kind, action, field class
    /// and basis, with the rule it is in.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let file: File = toml::from_str(text).map_err(|e| anyhow::anyhow!("policy: {e}"))?;
        let mut problems = Vec::new();
        let mut rules = Vec::new();
        for (i, r) in file.rules.iter().enumerate() {
            let at = format!("rule {} ({})", i + 1, r.description);
            let mut grant = Grant::default();
            let mut kinds = Vec::new();
            if r.kinds.is_empty() {
                problems.push(format!("{at}: kinds is empty"));
            }
            for k in &r.kinds {
                match AgencyKind::parse(k) {
                    Some(k) => kinds.push(k),
                    None => problems.push(format!("{at}: unknown kind of agency '{k}'")),
                }
            }
            for a in &r.actions {
                match Action::parse(a) {
                    Some(a) => grant.actions |= a.bit(),
                    None => problems.push(format!("{at}: unknown action '{a}'")),
                }
            }
            for f in &r.fields {
                match FieldClass::parse(f) {
                    Some(f) => grant.fields.insert(f),
                    None => problems.push(format!("{at}: unknown field class '{f}'")),
                }
            }
            for b in &r.see {
                match Basis::parse(b) {
                    Some(b) => grant.bases |= b.bit(),
                    None => problems.push(format!("{at}: unknown basis '{b}'")),
                }
            }
            for role in &r.roles {
                if role.is_empty() || !role.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                {
                    problems.push(format!("{at}: role '{role}' is not [A-Za-z0-9_]+"));
                }
            }
            rules.push(Rule { kinds, roles: r.roles.iter().cloned().collect(), grant });
        }
        if rules.is_empty() {
            problems.push("the policy has no rules: nobody could do anything".into());
        }
        anyhow::ensure!(problems.is_empty(), "policy: {}", problems.join("; "));
        Ok(Self { rules })
    }

    /// Reads and checks a policy file.
    pub fn from_file(path: &std::path::Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
        Self::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
    }

    /// The union of every rule `principal` matches.
    pub fn grant(&self, principal: &Principal) -> Grant {
        let mut g = Grant::default();
        for r in &self.rules {
            let kind_ok = r.kinds.contains(&principal.kind);
            let role_ok = r.roles.is_empty() || principal.roles.iter().any(|x| r.roles.contains(x));
            if kind_ok && role_ok {
                g.actions |= r.grant.actions;
                g.fields.0 |= r.grant.fields.0;
                g.bases |= r.grant.bases;
            }
        }
        g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(kind: AgencyKind, roles: &[&str]) -> Principal {
        Principal {
            agency: "a".into(),
            state: Some("FR".into()),
            kind,
            roles: roles.iter().map(|r| r.to_string()).collect(),
            facilities: vec![],
            via: None,
        }
    }

    #[test]
    fn the_embedded_policy_is_valid() {
        let policy = Policy::from_toml(DEFAULT_POLICY).expect("valid");
        assert!(policy.rules.len() >= 6);
    }

    #[test]
    fn biometrics_and_evidence_only_for_justice_roles() {
        let policy = Policy::embedded();
        for kind in [
            AgencyKind::Coordinator,
            AgencyKind::StateMinistry,
            AgencyKind::CustodialAuthority,
            AgencyKind::HumanitarianMonitor,
            AgencyKind::Service,
        ] {
            let g = policy.grant(&p(kind, &[]));
            assert!(!g.fields.contains(FieldClass::Biometrics), "{kind:?}");
            assert!(!g.fields.contains(FieldClass::Evidence), "{kind:?}");
        }
        assert!(policy.grant(&p(AgencyKind::Justice, &[])).fields.contains(FieldClass::Biometrics));
        let prosecutor = policy.grant(&p(AgencyKind::StateMinistry, &["prosecutor"]));
        assert!(prosecutor.fields.contains(FieldClass::Evidence));
        // A role only widens the kinds its rule names.
        let monitor = policy.grant(&p(AgencyKind::HumanitarianMonitor, &["prosecutor"]));
        assert!(!monitor.fields.contains(FieldClass::Evidence));
    }

    #[test]
    fn monitors_read_welfare_but_write_nothing() {
        let g = Policy::embedded().grant(&p(AgencyKind::HumanitarianMonitor, &[]));
        assert!(g.fields.contains(FieldClass::Welfare));
        assert!(g.allows(Action::PersonsRead));
        for a in [Action::PersonsCreate, Action::PersonsUpdate, Action::CustodyRecord] {
            assert!(matches!(g.require(a), Err(Error::PermissionDenied(_))), "{a:?}");
        }
    }

    #[test]
    fn unknown_names_are_refused_with_every_mistake_named() {
        let text = r#"
            [[rule]]
            description = "bad"
            kinds = ["pirate"]
            see = ["everything"]
            fields = ["dna"]
            actions = ["persons.delete"]
        "#;
        let e = Policy::from_toml(text).expect_err("refused").to_string();
        for word in ["pirate", "everything", "dna", "persons.delete", "rule 1 (bad)"] {
            assert!(e.contains(word), "{e} names {word}");
        }
        let unknown_key = "[[rule]]\ndescription='x'\nkinds=['coordinator']\nallow_all=true\n";
        assert!(Policy::from_toml(unknown_key).is_err());
        assert!(Policy::from_toml("").is_err(), "an empty policy is refused");
    }

    #[test]
    fn a_caller_no_rule_matches_gets_nothing() {
        let text = "[[rule]]\ndescription='x'\nkinds=['justice']\nroles=['judge']\nactions=['persons.read']\nsee=['all']\n";
        let policy = Policy::from_toml(text).expect("valid");
        assert_eq!(policy.grant(&p(AgencyKind::Justice, &[])), Grant::default());
        assert!(policy.grant(&p(AgencyKind::Justice, &["judge"])).allows(Action::PersonsRead));
    }
}

//! `named_enum!`: domain enums stored by name (readable in the database and in events) and
//! converted to and from their protobuf counterparts by name, so that no service writes the
//! same string tables twice.

/// Declares a domain enum whose variants have stable names.
///
/// ```
/// concord_platform::named_enum! {
///     /// Sex as recorded.
///     pub enum Sex("SEX_") { Male = "MALE", Female = "FEMALE" }
/// }
/// assert_eq!(Sex::parse("MALE"), Some(Sex::Male));
/// assert_eq!(Sex::from_proto_name("SEX_FEMALE"), Some(Sex::Female));
/// assert_eq!(Sex::Male.proto_name(), "SEX_MALE");
/// ```
#[macro_export]
macro_rules! named_enum {
    ($(#[$m:meta])* pub enum $name:ident($prefix:literal) { $($(#[$vm:meta])* $variant:ident = $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name { $($(#[$vm])* $variant),+ }

        impl $name {
            /// Every value.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            /// Every stored name.
            pub const NAMES: &'static [&'static str] = &[$($s),+];
            /// Prefix of the protobuf enum's value names.
            pub const PROTO_PREFIX: &'static str = $prefix;
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            /// Parses a stored name.
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
            /// Parses a protobuf value name (`PREFIX_NAME`).
            pub fn from_proto_name(s: &str) -> Option<Self> {
                s.strip_prefix($prefix).and_then(Self::parse)
            }
            /// The protobuf value name.
            pub fn proto_name(self) -> String {
                format!("{}{}", $prefix, self.as_str())
            }
        }

        impl ::serde::Serialize for $name {
            fn serialize<S: ::serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $name {
            fn deserialize<D: ::serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <String as ::serde::Deserialize>::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| ::serde::de::Error::custom(format!("unknown {} '{}'", stringify!($name), s)))
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

//! [`spelled_enum!`]: the config enums whose values are strings in the file.

/// Declares a config enum whose values are spelled as strings in the file:
/// the enum (deserialized from those spellings; its `#[default]` variant is
/// its `Default`), `as_str` giving a value's spelling back, and `Display`
/// writing it.
macro_rules! spelled_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$variant_meta:meta])*
                $variant:ident = $spelling:literal,
            )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
        pub enum $name {
            $(
                $(#[$variant_meta])*
                #[serde(rename = $spelling)]
                $variant,
            )+
        }

        impl $name {
            /// The config spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $spelling,)+
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

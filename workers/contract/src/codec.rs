//! Payload codecs of the wire contract: which content types a request may have, and the
//! reply's content type (always the request's).

/// `content-type` of a JSON payload (also what an absent `content-type` means).
pub const JSON: &str = "application/json";
/// `content-type` of a Protocol Buffers payload.
pub const PROTOBUF: &str = "application/x-protobuf";
/// Other names producers use for Protocol Buffers, read as [`PROTOBUF`].
const PROTOBUF_ALIASES: [&str; 2] = ["application/protobuf", "application/vnd.google.protobuf"];

/// How a payload is encoded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Codec {
    /// UTF-8 JSON.
    #[default]
    Json,
    /// Protocol Buffers (proto3 binary encoding).
    Protobuf,
}

impl Codec {
    /// Both codecs, JSON first.
    pub const ALL: [Self; 2] = [Self::Json, Self::Protobuf];

    /// The codec of a `content-type` value: the media type before any `;` parameters,
    /// case-insensitive. `None` for a media type the contract does not know.
    pub fn of_content_type(value: &str) -> Option<Self> {
        let media = value.split(';').next().unwrap_or_default().trim();
        if media.eq_ignore_ascii_case(JSON) {
            Some(Self::Json)
        } else if media.eq_ignore_ascii_case(PROTOBUF) || PROTOBUF_ALIASES.iter().any(|a| media.eq_ignore_ascii_case(a))
        {
            Some(Self::Protobuf)
        } else {
            None
        }
    }

    /// The `content-type` this codec's payloads are sent with.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => JSON,
            Self::Protobuf => PROTOBUF,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn media_types_are_read_without_parameters_or_case() {
        assert_eq!(Codec::of_content_type("application/json"), Some(Codec::Json));
        assert_eq!(Codec::of_content_type(" Application/JSON ; charset=utf-8"), Some(Codec::Json));
        assert_eq!(Codec::of_content_type("application/x-protobuf"), Some(Codec::Protobuf));
        assert_eq!(
            Codec::of_content_type("application/x-protobuf; messageType=greeter.Request"),
            Some(Codec::Protobuf)
        );
        assert_eq!(Codec::of_content_type("application/protobuf"), Some(Codec::Protobuf));
        assert_eq!(Codec::of_content_type("application/vnd.google.protobuf"), Some(Codec::Protobuf));
        for foreign in ["text/plain", "", ";", "application/jsonx", "application/x-protobuf2", "application/xml"] {
            assert_eq!(Codec::of_content_type(foreign), None, "{foreign:?}");
        }
    }

    #[test]
    fn content_types_round_trip() {
        for codec in Codec::ALL {
            assert_eq!(Codec::of_content_type(codec.content_type()), Some(codec));
        }
    }

    proptest! {
        /// Parameters never change the codec; any text is read without a panic.
        #[test]
        fn parameters_never_matter(media in "[ -~]{0,40}", params in "[ -~]{0,40}") {
            let bare = Codec::of_content_type(&media);
            if !media.contains(';') {
                prop_assert_eq!(Codec::of_content_type(&format!("{media};{params}")), bare);
            }
        }
    }
}

//! A worker's `.proto` file, read for the names of its request's fields, so the console
//! shows `{message: "Ada"}` where `courier dlq show` shows `{1: "Ada"}`. Reads only what
//! naming needs — messages, their fields and the types of message fields — and ignores
//! everything else (enums, options, services, imports).

use std::collections::HashMap;

/// Field names by path of field numbers, from one message of a `.proto` file.
#[derive(Clone, Debug, Default)]
pub struct FieldNames {
    /// Message name (its last component) → field number → (field name, type's last component).
    messages: HashMap<String, HashMap<u64, (String, String)>>,
    /// The message a payload is.
    top: String,
}

impl FieldNames {
    /// Read `source` (a `.proto` file's text) for the fields of the message `top`.
    pub fn parse(source: &str, top: &str) -> Result<Self, String> {
        let tokens = tokens(source);
        let mut messages: HashMap<String, HashMap<u64, (String, String)>> = HashMap::new();
        // Each open `{`: the message it belongs to, if any (an enum, a oneof's own, a service…).
        let mut scopes: Vec<Option<String>> = Vec::new();
        let mut i = 0;
        while i < tokens.len() {
            let word = tokens[i].as_str();
            let current = scopes.iter().rev().find_map(Clone::clone);
            match word {
                "message" if tokens.get(i + 2).is_some_and(|t| t == "{") => {
                    let name = tokens[i + 1].clone();
                    messages.entry(name.clone()).or_default();
                    scopes.push(Some(name));
                    i += 3;
                }
                "{" => {
                    // A oneof's fields belong to the message around it.
                    let oneof = i >= 2 && tokens[i - 2] == "oneof";
                    scopes.push(if oneof { current } else { None });
                    i += 1;
                }
                "}" => {
                    scopes.pop();
                    i += 1;
                }
                _ => {
                    // `[repeated|optional|required] Type name = N` inside a message's braces.
                    let in_message = scopes.last().is_some_and(Option::is_some);
                    if let (true, Some(name)) = (in_message, current.as_ref())
                        && tokens.get(i + 2).is_some_and(|t| t == "=")
                        && let Some(number) = tokens.get(i + 3).and_then(|n| n.parse::<u64>().ok())
                        && word.starts_with(|c: char| c.is_alphanumeric() || c == '_' || c == '.')
                        && !matches!(word, "option" | "reserved")
                    {
                        let type_name = tokens[i].rsplit('.').next().unwrap_or_default().to_owned();
                        let field = tokens[i + 1].clone();
                        messages.entry(name.clone()).or_default().insert(number, (field, type_name));
                        i += 4;
                    } else {
                        i += 1;
                    }
                }
            }
        }
        if !messages.contains_key(top) {
            return Err(format!("no message `{top}` in it"));
        }
        Ok(Self { messages, top: top.to_owned() })
    }

    /// The name of the field at `path` (field numbers from the top message).
    pub fn name(&self, path: &[u64]) -> Option<String> {
        let mut message = self.messages.get(&self.top)?;
        let (last, through) = path.split_last()?;
        for number in through {
            let (_, type_name) = message.get(number)?;
            message = self.messages.get(type_name)?;
        }
        message.get(last).map(|(name, _)| name.clone())
    }
}

/// Words, numbers and single punctuation, without comments or string literals' insides.
fn tokens(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
            }
            '"' | '\'' => {
                for d in chars.by_ref() {
                    if d == c {
                        break;
                    }
                }
                out.push("\"\"".to_owned());
            }
            c if c.is_alphanumeric() || c == '_' || c == '.' => {
                let mut word = c.to_string();
                while let Some(&d) = chars.peek().filter(|d| d.is_alphanumeric() || **d == '_' || **d == '.') {
                    word.push(d);
                    chars.next();
                }
                out.push(word);
            }
            c if c.is_whitespace() => {}
            // `map<K, V>` reads as one type word: its fields are named, its entries are not.
            '<' => {
                for d in chars.by_ref() {
                    if d == '>' {
                        break;
                    }
                }
                if let Some(last) = out.last_mut() {
                    last.push_str("<>");
                }
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROTO: &str = r#"
        syntax = "proto3";
        package shop; // a comment with message Fake { int32 x = 9; }
        /* message Hidden { string y = 1; } */
        import "other.proto";
        message Order {
          string id = 1;
          repeated Line lines = 2 [packed = false, default = 5];
          map<string, int32> tags = 3;
          oneof payment { Card card = 4; string voucher = 5; }
          reserved 6, 7;
          enum State { OPEN = 0; CLOSED = 1; }
          State state = 8;
          message Line { string sku = 1; int64 count = 2; }
        }
        message Card { string number = 1; }
    "#;

    #[test]
    fn fields_are_named_through_nested_messages() {
        let names = FieldNames::parse(PROTO, "Order").expect("parses");
        let name = |path: &[u64]| names.name(path);
        assert_eq!(name(&[1]).as_deref(), Some("id"));
        assert_eq!(name(&[2]).as_deref(), Some("lines"));
        assert_eq!(name(&[2, 1]).as_deref(), Some("sku"));
        assert_eq!(name(&[3]).as_deref(), Some("tags"));
        assert_eq!(name(&[4]).as_deref(), Some("card"));
        assert_eq!(name(&[4, 1]).as_deref(), Some("number"));
        assert_eq!(name(&[5]).as_deref(), Some("voucher"));
        assert_eq!(name(&[8]).as_deref(), Some("state"));
        assert_eq!(name(&[6]), None, "reserved");
        assert_eq!(name(&[9]), None, "commented out");
        assert_eq!(name(&[1, 1]), None, "a string has no fields");
        assert_eq!(name(&[]), None);
    }

    #[test]
    fn the_greeters_proto_names_its_request() {
        let proto = include_str!("../../../../schemas/greeter/greeter.proto");
        let names = FieldNames::parse(proto, "Request").expect("parses");
        assert_eq!(names.name(&[1]).as_deref(), Some("message"));
        assert!(FieldNames::parse(proto, "Missing").is_err());
    }

    #[test]
    fn any_text_is_read_without_panicking() {
        for text in
            ["", "message", "message {", "}}}", "message A { = 1; }", "message A { int32 a = ; }", "\"unterminated"]
        {
            let _ = FieldNames::parse(text, "A");
        }
    }
}

//! Matching a request's reply-to against the `--reply-allow` patterns.

/// `*` matches any run of characters; everything else matches itself. Greedy with one
/// backtrack point (the last `*`): O(pattern × text) whatever the text, which comes from
/// a producer; trying every split at every star was exponential in the number of stars.
pub(super) fn glob(pattern: &str, text: &str) -> bool {
    let (pattern, text): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut p, mut t) = (0, 0);
    // After the last `*` seen: the pattern position behind it, and the text position it
    // has swallowed up to.
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            star = Some((p + 1, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((after, swallowed)) = star {
            star = Some((after, swallowed + 1));
            p = after;
            t = swallowed + 1;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use super::*;

    #[test]
    fn glob_cases() {
        for (pattern, text, expected) in [
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("a*b*c", "abc", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
            ("*.replies", ".replies", true),
            ("*.replies", "x.replies.replies", true),
            ("**a", "ba", true),
            ("é*", "éa", true),
        ] {
            assert_eq!(glob(pattern, text), expected, "{pattern:?} {text:?}");
        }
    }

    /// The naive recursive matcher: tries every split at every star.
    fn naive(pattern: &str, text: &str) -> bool {
        match pattern.split_once('*') {
            None => pattern == text,
            Some((head, tail)) => text.strip_prefix(head).is_some_and(|rest| {
                (0..=rest.len()).filter(|&i| rest.is_char_boundary(i)).any(|i| naive(tail, &rest[i..]))
            }),
        }
    }

    proptest::proptest! {
        /// Agrees with the naive matcher on small inputs over a small alphabet.
        #[test]
        fn glob_agrees_with_the_naive_matcher(pattern in "[ab*]{0,6}", text in "[ab]{0,8}") {
            proptest::prop_assert_eq!(glob(&pattern, &text), naive(&pattern, &text));
        }
    }

    #[test]
    fn a_hostile_reply_to_against_many_stars_is_answered() {
        // The naive matcher needs ~n^5 steps here (hours); this one n × m.
        let text = "a".repeat(10_000);
        assert!(!glob("*a*a*a*a*b", &text));
    }
}

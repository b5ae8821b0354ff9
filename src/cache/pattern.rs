//! Glob patterns over keys, as KEYS and PSUBSCRIBE take them: `*` any run of bytes, `?` any
//! one byte, `[abc]`, `[^a]` and `[a-z]` one byte of a set, `\x` the byte `x`.

/// Whether `key` matches `pattern`.
pub(crate) fn matches(pattern: &[u8], key: &[u8]) -> bool {
    // Backtracking to the last `*` only: linear in practice, and at worst the product of the
    // lengths, never exponential.
    let (mut p, mut k) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while k < key.len() {
        if p < pattern.len() {
            match pattern[p] {
                b'*' => {
                    star = Some((p, k));
                    p += 1;
                    continue;
                }
                b'?' => {
                    p += 1;
                    k += 1;
                    continue;
                }
                b'[' => {
                    if let Some((fits, next)) = class(&pattern[p..], key[k]) {
                        if fits {
                            p += next;
                            k += 1;
                            continue;
                        }
                    } else if key[k] == b'[' {
                        // An unclosed `[` stands for itself.
                        p += 1;
                        k += 1;
                        continue;
                    }
                }
                b'\\' if p + 1 < pattern.len() && pattern[p + 1] == key[k] => {
                    p += 2;
                    k += 1;
                    continue;
                }
                b'\\' if p + 1 < pattern.len() => {}
                c if c == key[k] => {
                    p += 1;
                    k += 1;
                    continue;
                }
                _ => {}
            }
        }
        // A mismatch: the last `*` takes one more byte, or there is no match.
        match star {
            Some((sp, sk)) => {
                star = Some((sp, sk + 1));
                p = sp + 1;
                k = sk + 1;
            }
            None => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether `byte` is in the class at the start of `pattern` (which starts with `[`), and the
/// class's length; `None` if the class is not closed.
fn class(pattern: &[u8], byte: u8) -> Option<(bool, usize)> {
    let mut i = 1;
    let negated = pattern.get(i) == Some(&b'^');
    if negated {
        i += 1;
    }
    let mut found = false;
    loop {
        let c = *pattern.get(i)?;
        match c {
            b']' => return Some((found != negated, i + 1)),
            b'\\' => {
                let escaped = *pattern.get(i + 1)?;
                found |= escaped == byte;
                i += 2;
            }
            _ if pattern.get(i + 1) == Some(&b'-')
                && pattern.get(i + 2).is_some_and(|&e| e != b']') =>
            {
                let (mut low, mut high) = (c, pattern[i + 2]);
                if low > high {
                    std::mem::swap(&mut low, &mut high);
                }
                found |= (low..=high).contains(&byte);
                i += 3;
            }
            _ => {
                found |= c == byte;
                i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::matches;
    use proptest::prelude::*;

    #[test]
    fn patterns_match_as_keys_takes_them() {
        let yes = [
            ("*", ""),
            ("*", "anything"),
            ("user:*", "user:1"),
            ("user:*", "user:"),
            ("h?llo", "hello"),
            ("h[ae]llo", "hallo"),
            ("h[^e]llo", "hallo"),
            ("h[a-b]llo", "hbllo"),
            ("h[b-a]llo", "hallo"),
            ("a\\*b", "a*b"),
            ("*:*:x", "a:b:c:x"),
            ("[", "["),
            ("a[", "a["),
        ];
        for (p, k) in yes {
            assert!(matches(p.as_bytes(), k.as_bytes()), "{p} should match {k}");
        }
        let no = [
            ("user:*", "cfg:1"),
            ("h?llo", "hllo"),
            ("h[ae]llo", "hillo"),
            ("h[^e]llo", "hello"),
            ("a\\*b", "axb"),
            ("abc", "abcd"),
            ("*x", "xy"),
        ];
        for (p, k) in no {
            assert!(
                !matches(p.as_bytes(), k.as_bytes()),
                "{p} should not match {k}"
            );
        }
    }

    /// Patterns of literals and `*` only, against a regular expression's idea of them.
    fn by_regex(pattern: &[u8], key: &[u8]) -> bool {
        fn go(p: &[u8], k: &[u8]) -> bool {
            match p.split_first() {
                None => k.is_empty(),
                Some((b'*', rest)) => (0..=k.len()).any(|i| go(rest, &k[i..])),
                Some((&c, rest)) => k.first() == Some(&c) && go(rest, &k[1..]),
            }
        }
        go(pattern, key)
    }

    proptest! {
        #[test]
        fn stars_and_literals_match_as_a_naive_matcher_says(
            pattern in proptest::collection::vec(prop_oneof![Just(b'*'), Just(b'a'), Just(b'b')], 0..8),
            key in proptest::collection::vec(prop_oneof![Just(b'a'), Just(b'b')], 0..10),
        ) {
            prop_assert_eq!(matches(&pattern, &key), by_regex(&pattern, &key));
        }

        #[test]
        fn any_bytes_never_panic(pattern in any::<Vec<u8>>(), key in any::<Vec<u8>>()) {
            let _ = matches(&pattern, &key);
        }
    }
}

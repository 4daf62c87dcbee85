//! Secret scrubbing: signature-like query parameters are replaced by `***` in any URL
//! inside an error's text.

/// Replaces values of signature-like query parameters (`sig=`, `X-Amz-Signature=`,
/// `X-Amz-Credential=`, `X-Amz-Security-Token=`) in any URL inside `text`.
pub(crate) fn scrub_query_secrets(text: &str) -> String {
    let mut out = text.to_string();
    for param in [
        "sig=",
        "X-Amz-Signature=",
        "X-Amz-Credential=",
        "X-Amz-Security-Token=",
    ] {
        let mut from = 0;
        while let Some(pos) = out[from..].find(param) {
            let start = from + pos + param.len();
            let end = out[start..]
                .find(|c: char| c == '&' || c == ')' || c == '"' || c.is_whitespace())
                .map(|e| start + e)
                .unwrap_or(out.len());
            out.replace_range(start..end, "***");
            from = start + 3;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubs_signatures() {
        let t = "error sending request for url (http://h/c/k?sv=1&sig=abc%2Fdef&se=2)";
        let s = scrub_query_secrets(t);
        assert!(!s.contains("abc"), "{s}");
        assert!(s.contains("sig=***&se=2"), "{s}");
    }
}

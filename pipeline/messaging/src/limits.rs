//! Channel limits checked before sending: SMS segments (GSM-7 or UCS-2)
//! and WhatsApp template parameters.

/// GSM 03.38 basic character set.
const GSM7_BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the extension table: two septets each.
const GSM7_EXTENDED: &str = "^{}\\[~]|€\x0c";

/// How an SMS is encoded and how many parts it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmsSize {
    /// GSM-7 (true) or UCS-2.
    pub gsm7: bool,
    /// Septets (GSM-7) or UTF-16 code units (UCS-2).
    pub units: usize,
    /// Message parts; a concatenated SMS loses room per part to its header.
    pub segments: usize,
}

/// The encoding and segment count of `text`.
pub fn sms_size(text: &str) -> SmsSize {
    let mut septets = 0;
    let mut gsm7 = true;
    for c in text.chars() {
        if GSM7_BASIC.contains(c) {
            septets += 1;
        } else if GSM7_EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm7 = false;
            break;
        }
    }
    let (units, single, multi) = if gsm7 {
        (septets, 160, 153)
    } else {
        (text.encode_utf16().count(), 70, 67)
    };
    let segments = if units <= single {
        1
    } else {
        units.div_ceil(multi)
    };
    SmsSize {
        gsm7,
        units,
        segments,
    }
}

/// WhatsApp Cloud API limits on a template's body parameters: non-empty,
/// at most 1,024 characters, no newline or tab, no more than four spaces
/// in a row. Returns the first problem.
pub fn check_whatsapp_parameters(params: &[&str]) -> Result<(), String> {
    for (i, p) in params.iter().enumerate() {
        let n = i + 1;
        if p.is_empty() {
            return Err(format!("parameter {n} is empty"));
        }
        if p.chars().count() > 1024 {
            return Err(format!("parameter {n} is over 1,024 characters"));
        }
        if p.contains(['\n', '\t']) {
            return Err(format!("parameter {n} contains a newline or tab"));
        }
        if p.contains("     ") {
            return Err(format!("parameter {n} has more than four spaces in a row"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm7_and_ucs2_segments() {
        assert_eq!(sms_size(&"a".repeat(160)).segments, 1);
        assert_eq!(sms_size(&"a".repeat(161)).segments, 2);
        assert_eq!(sms_size(&"a".repeat(306)).segments, 2);
        assert_eq!(sms_size(&"a".repeat(307)).segments, 3);
        // The euro sign takes two septets.
        let s = sms_size(&"€".repeat(80));
        assert_eq!((s.gsm7, s.units, s.segments), (true, 160, 1));
        // One emoji makes the whole message UCS-2 (two code units).
        let s = sms_size(&format!("{}😀", "a".repeat(68)));
        assert_eq!((s.gsm7, s.units, s.segments), (false, 70, 1));
        assert_eq!(sms_size(&format!("{}😀", "a".repeat(69))).segments, 2);
        assert!(!sms_size("Grüße, Łukasz").gsm7, "Ł is not GSM-7");
    }

    #[test]
    fn whatsapp_parameter_limits() {
        assert!(check_whatsapp_parameters(&["Ana", "49.50 EUR"]).is_ok());
        assert!(check_whatsapp_parameters(&[""]).is_err());
        assert!(check_whatsapp_parameters(&["a\tb"]).is_err());
        assert!(check_whatsapp_parameters(&["a     b"]).is_err());
        assert!(check_whatsapp_parameters(&[&"x".repeat(1025)]).is_err());
    }
}

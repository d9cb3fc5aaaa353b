"""Premium appreciation SMS: Israeli mobile number normalisation, GSM 03.38 / UCS-2 segment arithmetic, and
sandboxed, per-language rendering of the message templates in include/templates/sms."""

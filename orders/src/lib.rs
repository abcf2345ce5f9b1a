//! Pure order domain: records, validation, status state machine, notification rules.

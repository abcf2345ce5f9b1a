//! What the operator tells users it did: one [`Change`] per write that changed something, published
//! as Kubernetes Events on the pipeline, one Event per reason and reconcile ([`coalesced`]).
//!
//! Pure: whoever plans a write describes its change here; the writer publishes it.

/// A change the operator made, published as a Kubernetes Event on the pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    /// PascalCase reason, e.g. `TopicCreated`, `PartitionsIncreased`.
    pub reason: &'static str,
    /// What changed, for humans.
    pub note: String,
}

/// The longest note events.k8s.io/v1 accepts, in bytes.
pub const NOTE_LIMIT: usize = 1024;

/// The changes of one reconcile as one change per reason, in the order the reasons first appear,
/// the notes of one reason joined with "; ". A new pipeline creates its topics and its children
/// in one reconcile: as an Event per object that was about ten Event writes per pipeline, ten
/// thousand for 1,000 new pipelines (issue #17). A joined note longer than [`NOTE_LIMIT`] ends
/// with how many notes it leaves out.
pub fn coalesced(changes: &[Change]) -> Vec<Change> {
    let mut reasons: Vec<(&'static str, Vec<&str>)> = Vec::new();
    for change in changes {
        match reasons
            .iter_mut()
            .find(|(reason, _)| *reason == change.reason)
        {
            Some((_, notes)) => notes.push(&change.note),
            None => reasons.push((change.reason, vec![&change.note])),
        }
    }
    reasons
        .into_iter()
        .map(|(reason, notes)| Change {
            reason,
            note: joined(&notes),
        })
        .collect()
}

/// `notes` joined with "; ", as many as fit [`NOTE_LIMIT`] with room for the count of the rest.
fn joined(notes: &[&str]) -> String {
    const SEPARATOR: &str = "; ";
    let omitted = |n: usize| format!("{SEPARATOR}and {n} more");
    let mut note = String::new();
    for (index, next) in notes.iter().enumerate() {
        let rest = notes.len() - index - 1;
        let separator = if index == 0 { "" } else { SEPARATOR };
        let reserve = if rest == 0 { 0 } else { omitted(rest).len() };
        if note.len() + separator.len() + next.len() + reserve > NOTE_LIMIT {
            if index == 0 {
                // A single note over the limit: cut at a character boundary, keeping room.
                let room = NOTE_LIMIT.saturating_sub(omitted(notes.len() - 1).len());
                let cut = next.floor_char_boundary(room);
                note.push_str(&next[..cut]);
                if notes.len() > 1 {
                    note.push_str(&omitted(notes.len() - 1));
                }
                return note;
            }
            note.push_str(&omitted(notes.len() - index));
            return note;
        }
        note.push_str(separator);
        note.push_str(next);
    }
    note
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn change(reason: &'static str, note: &str) -> Change {
        Change {
            reason,
            note: note.to_owned(),
        }
    }

    #[test]
    fn changes_of_one_reason_become_one_in_the_order_reasons_first_appear() {
        let changes = [
            change("TopicCreated", "created topic orders"),
            change("ChildCreated", "Created Deployment shop-validate"),
            change("TopicCreated", "created topic orders.dlq"),
        ];
        assert_eq!(
            coalesced(&changes),
            [
                change(
                    "TopicCreated",
                    "created topic orders; created topic orders.dlq"
                ),
                change("ChildCreated", "Created Deployment shop-validate"),
            ]
        );
        assert!(coalesced(&[]).is_empty());
    }

    #[test]
    fn a_joined_note_past_the_limit_says_how_many_it_leaves_out() {
        let notes: Vec<Change> = (0..40)
            .map(|i| change("TopicCreated", &format!("created topic {i:0>40}")))
            .collect();
        let [only] = coalesced(&notes).try_into().expect("one reason");
        assert!(only.note.len() <= NOTE_LIMIT, "{}", only.note.len());
        let kept = only.note.matches("created topic").count();
        assert!(
            only.note.ends_with(&format!("; and {} more", 40 - kept)),
            "{}",
            only.note
        );
    }

    proptest! {
        /// Whatever the notes (any length, any characters), the note fits the API's limit, and a
        /// note that fits whole is kept whole.
        #[test]
        fn every_note_fits_the_limit(notes in prop::collection::vec(".{0,1500}", 1..6)) {
            let changes: Vec<Change> = notes.iter().map(|n| change("Reason", n)).collect();
            let [only] = coalesced(&changes).try_into().expect("one reason");
            prop_assert!(only.note.len() <= NOTE_LIMIT);
            if notes.len() == 1 && notes[0].len() <= NOTE_LIMIT {
                prop_assert_eq!(&only.note, &notes[0]);
            }
        }
    }
}

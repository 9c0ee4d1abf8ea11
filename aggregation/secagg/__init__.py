"""SecAgg+ (Bell et al. 2020) as pure state machines: signed key agreement, Shamir shares and
keyed-cipher masks."""

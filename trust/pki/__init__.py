"""Federation PKI: a CA, enrolment by CSR, certificates with SPIFFE-style identities and roles, revocation."""

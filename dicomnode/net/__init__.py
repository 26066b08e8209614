"""The receiving AE: association acceptance, C-ECHO and C-STORE."""

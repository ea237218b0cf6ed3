"""Pictures of an IHC result for a pathologist to check."""

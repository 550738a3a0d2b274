"""Assets by stage: data, members, ensemble."""

"""The sharded cut source of the serving tests, with the reference rows it holds."""

from embedlookup.serving import ShardedTables


class ShardedSource(ShardedTables):
    def rows(self, keys):
        """Reference rows: what the model holds now (zeros when absent), read from the source's own tables."""
        return self.find(keys)

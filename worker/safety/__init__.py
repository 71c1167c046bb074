"""Reader safety at the edges: the data keys that seal stored addresses (``keyring``,
``data_keys``), JSON from the internet parsed with a bound (``json_documents``) and CSV cells
escaped against formula injection (``csv_cells``)."""

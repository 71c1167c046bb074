"""The editors' desk: desk accounts and their login sessions (``accounts``), the action log
(``audit``), and the desk's view of editions and sends. No web framework here: the pages are in
``worker.web.desk``."""

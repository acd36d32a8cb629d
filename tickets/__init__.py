"""What producers and workers share, importing nothing of the project but :mod:`config`:
the canonical ticket (:mod:`tickets.model`), the error tree (:mod:`tickets.errors`), the SQL
tables and their migrations (:mod:`tickets.db`, :mod:`tickets.migrate`), the message
contract (:mod:`tickets.queue`), the ledger of accepted tickets (:mod:`tickets.ledger`), the
workers' heartbeats (:mod:`tickets.heartbeat`), HTML to text (:mod:`tickets.html`), which
intake and text preparation both use, and the marks that recognise the product's own writes
in a helpdesk (:mod:`tickets.marks`)."""

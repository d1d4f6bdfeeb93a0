"""The field kit: `check` (probes, proxy authentication, verdicts), `pcap` (capture reading, TCP
reassembly, judging) and the page for a ticket.
"""

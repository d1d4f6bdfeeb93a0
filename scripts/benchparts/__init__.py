"""The parts of `scripts/bench`, one module per measurement, all with one interface.

- `cpu`: a process's CPU time, from /proc;
- `lab`: the peers (origin and stray-alert servers, in a process of their own) and the two mitmdumps;
- `common`: the shared `Setup` handed to every part (it starts the lab on first use), the `Outcome` every part
  returns, and small statistics;
- `load`: the load generator (asyncio, keep-alive, absolute-form requests through a proxy);
- `clean`, `cpuprofile`, `answer`, `mixed`, `micro`, `pcap`, `upgrade`: one measurement each (`upgradepeers`,
  `upgradesetup`, `upgradeloads` and `upgrade_probe` serve `upgrade`);
- `main`: the options, the order the parts run in, the table, the JSON file and the exit status.

Imports point one way, down this list. A part is a function `run(setup: Setup) -> Outcome`: `Outcome.data` goes
into the JSON under the part's key, `Outcome.lines` into the table, `Outcome.wrong` counts answers that were not
what they should be. A new part (the upgrade benchmarks) is a new module with such a function and one line in
`main.PARTS`.
"""

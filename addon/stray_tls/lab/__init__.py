"""The lab: the failing ESRS check chain, reproduced on loopback (stand-in server, faulty proxy, check)."""

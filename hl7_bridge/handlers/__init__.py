"""Message handlers: each turns a parsed message into the entries of ONE transaction Bundle."""

"""Structured output, engine-neutral: checks of JSON schemas, regexes and choices, the
converters from regexes and choices to GBNF grammars, the OpenAI tools shape and
llguidance's options. A leaf: it imports only `nimble.types` and `nimble.errors`; the API,
the runtime and the engines import it."""

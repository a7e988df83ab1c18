"""Pure core: no Faust, no network, no global state. Everything here is unit-testable."""

"""Pure renderers: desired state -> nft ruleset, iptables-restore input, plan and status text."""

// This folder is the source of gotch's rgext package, which
// scripts/setup-gotch.sh copies into the patched gotch; this go.mod only
// keeps it out of the refiners module (it builds there, not here).
module rgext-source

go 1.26

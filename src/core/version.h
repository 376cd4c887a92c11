// version.h: the commit a build was compiled from; the Makefile writes its definition
// (build/version.c) at every build, so binaries and benchmark docs can say what they ran.
#pragma once

// git's short hash of HEAD, "-dirty" when tracked sources differed from it, "unknown" outside git.
extern const char peft_version[];

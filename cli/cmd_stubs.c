#include "cli.h"
#include <stdio.h>

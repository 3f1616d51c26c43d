/* The version of the library as built, for callers to compare with the headers they used. */
#include "extproc/version.h"

unsigned extproc_version(const char **text) {
  if (text) *text = EXTPROC_VERSION_STRING;
  return EXTPROC_VERSION_NUMBER;
}

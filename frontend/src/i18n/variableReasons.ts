/**
 * Why a stack variable's value (or default) was refused: the `reason` of each of `params.problems` of an
 * `invalid_variables` or `invalid_variable_schema` error, worded with the values it quotes (`{got}` is the
 * `got` word below, empty for a secret, whose value is never quoted). The English words read as the server's
 * own message; `backend/tests/unit/test_ui_words.py` fails when a reason lacks its words in either language.
 */
export const variableReasonsEn: Record<string, string> = {
  not_string: 'must be a string{got}',
  too_long: 'longer than {max} characters',
  nul_character: 'must not contain NUL (\\x00) characters',
  multiline: 'must be a single line (use a textarea variable for multi-line text)',
  min_length: 'must be at least {min_length} characters long',
  max_length: 'must be at most {max_length} characters long',
  pattern: 'does not match the pattern {pattern}',
  min: 'must be at least {min}',
  max: 'must be at most {max}',
  not_integer: 'must be an integer{got}',
  not_number: 'must be a number{got}',
  not_boolean: 'must be true or false{got}',
  not_a_choice: 'must be one of {choices}{got}',
  secret_literal_default:
    'a secret’s default must be a generator such as generate_password(24); a literal default would be stored and shown in clear',
  unknown_variable: 'unknown variable; known here: {known}',
  not_a_group_object: 'must be an object holding the group’s variables',
  required: 'required: give a value (the variable has no default)',
  values_not_an_object: 'must be an object mapping variable names to values',
  generator_argument: '{function}: the argument must be an integer between {min} and {max}',
  generator_bounds_reversed: '{function}: low is greater than high',
  no_free_port: 'random_port(): found no free TCP port between {min} and {max}',
  generator_syntax: 'invalid generator expression: {message}',
  generator_forbidden_tag: 'a generator expression cannot include, import or extend',
  generator_unknown_name: 'unknown name(s) {names} in generator expression; available: {available}',
  generator_failed: 'default generator failed: {message}',
}

export const variableReasonsFr: Record<string, string> = {
  not_string: 'doit être un texte{got}',
  too_long: 'dépasse {max} caractères',
  nul_character: 'ne doit pas contenir de caractère NUL (\\x00)',
  multiline: 'doit tenir sur une ligne (une variable textarea accepte plusieurs lignes)',
  min_length: 'doit compter au moins {min_length} caractères',
  max_length: 'doit compter au plus {max_length} caractères',
  pattern: 'ne correspond pas au motif {pattern}',
  min: 'doit valoir au moins {min}',
  max: 'doit valoir au plus {max}',
  not_integer: 'doit être un entier{got}',
  not_number: 'doit être un nombre{got}',
  not_boolean: 'doit valoir true ou false{got}',
  not_a_choice: 'doit être l’une des valeurs {choices}{got}',
  secret_literal_default:
    'la valeur par défaut d’un secret doit être un générateur comme generate_password(24) : une valeur littérale serait stockée et affichée en clair',
  unknown_variable: 'variable inconnue ; variables connues ici : {known}',
  not_a_group_object: 'doit être un objet contenant les variables du groupe',
  required: 'obligatoire : donnez une valeur (la variable n’a pas de valeur par défaut)',
  values_not_an_object: 'doit être un objet associant les noms des variables à leurs valeurs',
  generator_argument: '{function} : l’argument doit être un entier entre {min} et {max}',
  generator_bounds_reversed: '{function} : la borne basse dépasse la borne haute',
  no_free_port: 'random_port() : aucun port TCP libre entre {min} et {max}',
  generator_syntax: 'expression de générateur invalide : {message}',
  generator_forbidden_tag: 'une expression de générateur ne peut pas utiliser include, import ni extends',
  generator_unknown_name: 'nom(s) inconnu(s) {names} dans l’expression de générateur ; disponibles : {available}',
  generator_failed: 'le générateur par défaut a échoué : {message}',
}

/** The words around a variable's problem: the value it got, and which variable. */
export const variableWordsEn: Record<string, string> = {
  got: ', got {got}',
  at: '{where}: {why}',
}

export const variableWordsFr: Record<string, string> = {
  got: ' (reçu {got})',
  at: '{where} : {why}',
}
